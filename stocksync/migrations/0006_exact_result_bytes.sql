-- processed_events keeps the exact bytes each event emitted, so a redelivery re-emits them unchanged (jsonb
-- re-ordered keys and spacing). Rows stored before keep their jsonb rendering as text.

ALTER TABLE processed_events ALTER COLUMN result TYPE bytea USING convert_to(result::text, 'UTF8');
