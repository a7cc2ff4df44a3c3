//! The root package exists only to own the end-to-end tests in `tests/`.
