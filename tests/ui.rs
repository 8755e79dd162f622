//! Compile-time behaviour of the macros: what compiles, and the error each
//! misuse gets (`tests/ui/fail/*.stderr`). Regenerate the expected output
//! with `TRYBUILD=overwrite cargo test --test ui` and review the diff.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
