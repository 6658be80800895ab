//! Helpers of the test binaries outside `it`.

// Each binary that includes this uses its own part of it.
#[allow(dead_code)]
pub mod alloc;
