-- Why a FAILED event happened, when the gateway knows: the code and text of the StUF
-- Fo01 that refused the message (gateway/store/messages.py add_event).  Shown to the
-- back office with the event (REST getUnprocessedMessageEvents, webhooks).
ALTER TABLE message_event ADD COLUMN error_code TEXT;
ALTER TABLE message_event ADD COLUMN error_text TEXT;
