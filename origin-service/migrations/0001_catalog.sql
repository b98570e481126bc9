-- The shirt shop's catalog. Listing reads products by (category_id, id) for keyset pagination;
-- the detail page fans out to prices, stock and recommendations concurrently.
CREATE TABLE categories (
    id          INTEGER PRIMARY KEY,
    slug        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    description TEXT NOT NULL
);

CREATE TABLE brands (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);

CREATE TABLE products (
    id          INTEGER PRIMARY KEY,
    sku         TEXT NOT NULL UNIQUE,
    category_id INTEGER NOT NULL REFERENCES categories(id),
    brand_id    INTEGER NOT NULL REFERENCES brands(id),
    name        TEXT NOT NULL,
    color       TEXT NOT NULL,
    fit         TEXT NOT NULL,
    material    TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at  INTEGER NOT NULL -- unix seconds
);
CREATE INDEX products_by_category ON products(category_id, id);

CREATE TABLE prices (
    product_id       INTEGER PRIMARY KEY REFERENCES products(id),
    amount_cents     INTEGER NOT NULL CHECK (amount_cents > 0),
    currency         TEXT NOT NULL,
    compare_at_cents INTEGER
);

CREATE TABLE stock (
    product_id INTEGER NOT NULL REFERENCES products(id),
    size       TEXT NOT NULL CHECK (size IN ('S', 'M', 'L', 'XL', 'XXL')),
    size_rank  INTEGER NOT NULL,
    quantity   INTEGER NOT NULL CHECK (quantity >= 0),
    PRIMARY KEY (product_id, size_rank)
) WITHOUT ROWID;

CREATE TABLE recommendations (
    product_id     INTEGER NOT NULL REFERENCES products(id),
    rank           INTEGER NOT NULL,
    recommended_id INTEGER NOT NULL REFERENCES products(id),
    PRIMARY KEY (product_id, rank)
) WITHOUT ROWID;
