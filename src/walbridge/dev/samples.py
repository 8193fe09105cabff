"""The sample schemas of the demo and the tests: the seeds' ``ecommerce_db`` and ``employees``."""

from __future__ import annotations

__all__ = ["ECOMMERCE_CHANGES", "ECOMMERCE_SCHEMA", "EMPLOYEES_SCHEMA"]

ECOMMERCE_SCHEMA = """
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

ALTER TABLE inventory.customers REPLICA IDENTITY FULL;
ALTER TABLE inventory.orders REPLICA IDENTITY FULL;

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
"""

ECOMMERCE_CHANGES: tuple[str, ...] = (
    "INSERT INTO inventory.customers (customer_code, first_name, last_name, email, phone, address) VALUES "
    "('CUST003', 'Ada', 'Lovelace', 'ada@example.com', '+1-555-0103', "
    '\'{"street": "1 Analytical Way", "city": "London", "state": "LDN", "zip": "N1"}\')',
    "UPDATE inventory.customers SET phone = '+1-555-0199', updated_at = now() "
    "WHERE customer_code = 'CUST001'",
    "INSERT INTO inventory.orders (order_number, customer_id, total_amount, items) "
    'SELECT \'ORD-2024-003\', id, 42.50, \'[{"product": "Notebook", "quantity": 5, "price": 8.50}]\' '
    "FROM inventory.customers WHERE customer_code = 'CUST003'",
    "UPDATE inventory.orders SET status = 'shipped', updated_at = now() WHERE order_number = 'ORD-2024-001'",
    "DELETE FROM inventory.orders WHERE order_number = 'ORD-2024-002'",
)

EMPLOYEES_SCHEMA = """
CREATE TABLE IF NOT EXISTS employees (
    emp_id INTEGER PRIMARY KEY,
    first_name VARCHAR(100),
    last_name VARCHAR(100),
    dob DATE,
    city VARCHAR(100),
    salary INTEGER
);
"""
