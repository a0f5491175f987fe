//! The npm package's wasm: the delivery core as the JS class `Core`, from
//! distributed-events-client's `js` feature; this crate only links it as a cdylib (see
//! Cargo.toml for why). Built by `js/build.mjs`; js/src/*.js drives it.
//!
//! In the browser it has no std: std's panic and formatting machinery alone would weigh
//! more than the delivery core. So this crate brings what std would: an allocator and a
//! panic handler.
#![cfg_attr(target_arch = "wasm32", no_std)]

// The #[wasm_bindgen] exports are linked from the dependency; naming the crate makes sure
// it is linked even though nothing here calls it.
pub use distributed_events_client;

/// Talc: 1.7 KB gzipped less than dlmalloc (which std uses on wasm32); its set-up for
/// single-threaded wasm (no atomics, as here) is a safe static, so no `unsafe` here.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

/// A panic is a bug (the core does not panic on any input): stop at once, with no message
/// to format, and JS sees a `RuntimeError: unreachable`.
#[cfg(target_arch = "wasm32")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    core::arch::wasm32::unreachable()
}
