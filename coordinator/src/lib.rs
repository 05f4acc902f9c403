//! 2PC/3PC coordinator (being written).
