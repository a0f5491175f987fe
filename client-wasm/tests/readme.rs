//! The READMEs show `examples/quick_start.rs` verbatim, so that the quick start a reader
//! copies is the one `cargo test` compiles.

#[test]
fn both_readmes_show_the_compiled_quick_start() {
    let example = include_str!("../examples/quick_start.rs");
    for (name, readme) in [
        ("README.md", include_str!("../../README.md")),
        ("client-wasm/README.md", include_str!("../README.md")),
    ] {
        assert!(
            readme.contains(&format!("```rust\n{example}```\n")),
            "{name} does not show client-wasm/examples/quick_start.rs verbatim; copy it in again"
        );
    }
}
