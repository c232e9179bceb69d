//! End-to-end tests of berth, run for real as root: see the test files.
