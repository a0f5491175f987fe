//! The npm package's wasm: the `EventBusClient` class and its TypeScript types come from
//! distributed-events-client's `js` feature; this crate only links them as a cdylib
//! (see Cargo.toml for why). Built by `js/build.mjs`.

// The binding's #[wasm_bindgen] exports are linked from the dependency; naming the crate
// makes sure it is linked even though nothing here calls it.
pub use distributed_events_client;

// Talc replaces Rust's default allocator (dlmalloc) in the browser: fewer bytes of wasm,
// and its single-threaded set-up needs no `unsafe`. Without atomics, wasm is single-threaded.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();
