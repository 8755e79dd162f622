-- One tenant's table for the loadgen crate, created inside the tenant's
-- schema by `provision_tenants`. `tenant` records the schema the row was
-- inserted into, so that a read or a write scoped to another tenant that
-- reaches this row shows up as a cross-tenant violation.
CREATE TABLE loadgen_items (
    id bigserial PRIMARY KEY,
    tenant text NOT NULL DEFAULT current_schema(),
    payload text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
