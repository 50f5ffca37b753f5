"""Visual-token pruning: budgets (fixed, ratio, SAP), scoring methods, and the engine that removes tokens."""
