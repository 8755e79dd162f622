ALTER TABLE notes ADD COLUMN owner text NOT NULL DEFAULT current_schema();
