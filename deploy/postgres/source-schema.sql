-- Source database: the seed's e-commerce schema and sample rows, plus what capture needs.
-- Runs once, on an empty data directory, after 00-source-init.sh (as the superuser).

CREATE SCHEMA IF NOT EXISTS inventory;

CREATE TABLE IF NOT EXISTS inventory.customers (
    id SERIAL PRIMARY KEY,
    customer_code VARCHAR(20) UNIQUE NOT NULL,
    first_name VARCHAR(255) NOT NULL,
    last_name VARCHAR(255) NOT NULL,
    email VARCHAR(255) UNIQUE NOT NULL,
    phone VARCHAR(20),
    address JSONB,
    status VARCHAR(20) DEFAULT 'active',
    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW()
);

CREATE TABLE IF NOT EXISTS inventory.orders (
    id SERIAL PRIMARY KEY,
    order_number VARCHAR(50) UNIQUE NOT NULL,
    customer_id INTEGER NOT NULL REFERENCES inventory.customers(id),
    order_date TIMESTAMPTZ DEFAULT NOW(),
    status VARCHAR(20) DEFAULT 'pending',
    total_amount DECIMAL(10,2) NOT NULL,
    currency VARCHAR(3) DEFAULT 'USD',
    shipping_address JSONB,
    items JSONB,
    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW()
);

-- Full before-images for updates and deletes.
ALTER TABLE inventory.customers REPLICA IDENTITY FULL;
ALTER TABLE inventory.orders REPLICA IDENTITY FULL;

CREATE INDEX IF NOT EXISTS idx_customers_status ON inventory.customers(status);
CREATE INDEX IF NOT EXISTS idx_orders_customer_id ON inventory.orders(customer_id);
CREATE INDEX IF NOT EXISTS idx_orders_status ON inventory.orders(status);

-- The capture role (created by 00-source-init.sh) reads the tables for the snapshot.
GRANT USAGE ON SCHEMA inventory TO walbridge;
GRANT SELECT ON ALL TABLES IN SCHEMA inventory TO walbridge;
ALTER DEFAULT PRIVILEGES IN SCHEMA inventory GRANT SELECT ON TABLES TO walbridge;

-- Creating a publication needs table ownership, which the capture role does not have: the
-- superuser creates it here, with the name and tables of deploy/config/capture.yaml, and
-- `walbridge setup` finds it in place. Add a table: ALTER PUBLICATION walbridge ADD TABLE ...
CREATE PUBLICATION walbridge FOR TABLE inventory.customers, inventory.orders;

INSERT INTO inventory.customers (customer_code, first_name, last_name, email, phone, address) VALUES
('CUST001', 'John', 'Doe', 'john.doe@example.com', '+1-555-0101',
 '{"street": "123 Main St", "city": "New York", "state": "NY", "zip": "10001"}'),
('CUST002', 'Jane', 'Smith', 'jane.smith@example.com', '+1-555-0102',
 '{"street": "456 Oak Ave", "city": "Los Angeles", "state": "CA", "zip": "90210"}')
ON CONFLICT (customer_code) DO NOTHING;

INSERT INTO inventory.orders (order_number, customer_id, total_amount, shipping_address, items) VALUES
('ORD-2024-001', 1, 149.99, '{"street": "123 Main St", "city": "New York", "state": "NY", "zip": "10001"}',
 '[{"product": "Laptop Stand", "quantity": 1, "price": 149.99}]'),
('ORD-2024-002', 2, 79.99, '{"street": "456 Oak Ave", "city": "Los Angeles", "state": "CA", "zip": "90210"}',
 '[{"product": "Wireless Mouse", "quantity": 2, "price": 39.99}]')
ON CONFLICT (order_number) DO NOTHING;
