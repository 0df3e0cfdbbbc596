"""Property tests for the parsers that read outside input."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from cpa.generate import format_duration
from cpa.validate import validate_cpa
from cpa.xsdtypes import format_datetime, parse_datetime, parse_duration
from xmlsafe import UnsafeXmlError, parse_xml


@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3000)))
def test_duration_round_trip(td: timedelta) -> None:
    assert parse_duration(format_duration(td)) == td


@given(st.text(max_size=40))
def test_duration_parser_raises_only_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_duration(text)


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 1), max_value=datetime(2999, 1, 1), timezones=st.just(UTC)
    )
)
def test_datetime_round_trip_to_the_millisecond(dt: datetime) -> None:
    expected = dt.replace(microsecond=dt.microsecond // 1000 * 1000)
    assert parse_datetime(format_datetime(dt)) == expected


@given(st.binary(max_size=2000))
def test_xml_parser_raises_only_its_own_error(data: bytes) -> None:
    with contextlib.suppress(UnsafeXmlError):
        parse_xml(data)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_validation_never_crashes_on_mutated_cpas(cpa_xml, data) -> None:
    """Change one attribute or text of a valid CPA; validation reports, never raises."""
    root = etree.fromstring(cpa_xml())
    elements = [e for e in root.iter() if isinstance(e.tag, str)]
    element = data.draw(st.sampled_from(elements))
    value = data.draw(
        st.one_of(
            st.text(max_size=12),
            st.sampled_from(
                [
                    "",
                    "always",
                    "perMessage",
                    "-1",
                    "P",
                    "PT-5M",
                    "9999999999999999999999",
                    "http://x",
                    "0001-01-01T00:00:00+14:00",
                    "9999-12-31T23:59:59-14:00",
                    "P2000000Y",
                ]
            ),
        )
    )
    if element.attrib and data.draw(st.booleans()):
        name = data.draw(st.sampled_from(sorted(element.attrib)))
        try:
            element.set(name, value)
        except ValueError:  # characters XML cannot hold
            return
    elif len(element) == 0:
        try:
            element.text = value
        except ValueError:
            return
    report = validate_cpa(etree.tostring(root))
    assert report.ok or report.errors
