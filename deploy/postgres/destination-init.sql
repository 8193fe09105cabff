-- Destination database: the tables the PostgreSQL sink writes (same names as the source).
-- No foreign keys: each topic is consumed on its own, so an order may arrive before its customer.
-- The sink creates its offsets table (walbridge.offsets) itself.

CREATE SCHEMA IF NOT EXISTS inventory;

CREATE TABLE IF NOT EXISTS inventory.customers (
    id INTEGER PRIMARY KEY,
    customer_code VARCHAR(20) NOT NULL,
    first_name VARCHAR(255) NOT NULL,
    last_name VARCHAR(255) NOT NULL,
    email VARCHAR(255) NOT NULL,
    phone VARCHAR(20),
    address JSONB,
    status VARCHAR(20),
    created_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ
);

CREATE TABLE IF NOT EXISTS inventory.orders (
    id INTEGER PRIMARY KEY,
    order_number VARCHAR(50) NOT NULL,
    customer_id INTEGER NOT NULL,
    order_date TIMESTAMPTZ,
    status VARCHAR(20),
    total_amount DECIMAL(10,2) NOT NULL,
    currency VARCHAR(3),
    shipping_address JSONB,
    items JSONB,
    created_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ
);

-- The sink's role (created by 00-destination-init.sh) writes these tables and nothing else.
GRANT USAGE ON SCHEMA inventory TO walbridge_sink;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA inventory TO walbridge_sink;
