-- A tenant's items, created inside the tenant's schema by
-- `provision_tenant` (the shared `public.items` is created at start).
CREATE TABLE items (
    id bigserial PRIMARY KEY,
    name text NOT NULL
);
