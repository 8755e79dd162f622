DROP TABLE loadgen_items;
