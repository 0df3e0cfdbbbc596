"""``[stuf]`` in the config file: the relay's role, codes, CPAs and limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config


def test_off_by_default(write) -> None:
    assert load_config(write("")).stuf.role == ""


def test_gemeente_role(write) -> None:
    stuf = load_config(
        write(
            '[stuf]\nrole = "gemeente"\ncpa_id = "c"\ngemeentecodes = ["0363", "0384"]\n'
            'actions = { WMO301 = "Toewijzing" }\nreleases = ["3.2", "2.3"]\n'
        )
    ).stuf
    assert stuf.cpa_ids() == ("c",)
    assert stuf.gemeentecodes == ("0363", "0384")
    assert stuf.action_for("WMO301") == "Toewijzing" and stuf.action_for("JW301") == "JW301"
    assert stuf.service_for("ijw") == "urn:osb:services:GGK:iJw:3.2"
    assert stuf.releases == ("3.2", "2.3")


def test_node_role(write, tmp_path: Path) -> None:
    stuf = load_config(
        write(
            '[stuf]\nrole = "node"\nprovider_outbox = "out"\n'
            '[[stuf.gemeente]]\ncpa_id = "cpa-0363"\ngemeentecodes = ["0363"]\n'
            '[[stuf.gemeente]]\ncpa_id = "cpa-0384"\ngemeentecodes = ["0384", "0385"]\n'
            'releases = ["2.3"]\n'
        )
    ).stuf
    assert stuf.gemeenten[0].releases == ()
    assert stuf.gemeenten[1].releases == ("2.3",)
    assert stuf.cpa_ids() == ("cpa-0363", "cpa-0384")
    assert stuf.gemeenten[1].gemeentecodes == ("0384", "0385")
    assert stuf.provider_outbox == (tmp_path / "out").resolve()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[stuf]\nrole = "aanbieder"\n', "role must be one of"),
        ('[stuf]\ncpa_id = "c"\n', "need role"),
        ('[stuf]\nrole = "gemeente"\ncpa_id = "c"\n', "needs cpa_id and gemeentecodes"),
        ('[stuf]\nrole = "gemeente"\ncpa_id = "c"\ngemeentecodes = ["363"]\n', "4-digit"),
        ('[stuf]\nrole = "node"\n', "at least one"),
        ('[stuf]\nrole = "node"\n[[stuf.gemeente]]\ncpa_id = "c"\n', "needs cpa_id and"),
        (
            '[stuf]\nrole = "node"\n[[stuf.gemeente]]\ncpa_id = "c"\ngemeentecodes = ["0363"]\n'
            "x = 1\n",
            "unknown option 'x'",
        ),
        (
            '[stuf]\nrole = "gemeente"\ncpa_id = "c"\ngemeentecodes = ["0363"]\n'
            'applicatie_versie = "1"\n',
            "4 digits",
        ),
        (
            '[stuf]\nrole = "gemeente"\ncpa_id = "c"\ngemeentecodes = ["0363"]\n'
            "max_envelope_bytes = 10\n",
            "between 1 KiB",
        ),
        (
            '[stuf]\nrole = "gemeente"\ncpa_id = "c"\ngemeentecodes = ["0363"]\napplicatie = "x"\n',
            "3 to 50",
        ),
    ],
)
def test_bad_settings_are_refused(write, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(extra))
