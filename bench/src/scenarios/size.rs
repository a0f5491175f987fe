//! Scenario 7, client size: what a browser downloads to use the npm package — the bundled
//! entry `dist/index.js` (the package's JS and the wasm-bindgen glue, minified) and the
//! wasm — each gzipped at level 9 as a static server would, the same files and level as
//! `js/size.mjs`. Reads the package as built by `scripts/build-web.sh`; it does not build it.

use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::report::{Report, Target};
use crate::{Args, BenchError};

const SCENARIO: &str = "size";
/// Issue 12: what a browser loads, gzipped, at most 25 KB (read as 25,000 bytes).
const TARGET_BYTES: f64 = 25_000.0;
const FILES: [&str; 2] = ["dist/distributed_events_client_bg.wasm", "dist/index.js"];

pub fn run(args: &Args, report: &Report) -> Result<(), BenchError> {
    let dir = &args.package_dir;
    if !dir.join(FILES[0]).is_file() {
        let message = format!(
            "{} is missing: build the npm package first with scripts/build-web.sh",
            dir.join(FILES[0]).display()
        );
        if args.smoke {
            eprintln!("size: skipped, {message}");
            return Ok(());
        }
        return Err(BenchError(message));
    }
    let mut total = 0usize;
    for file in FILES {
        let gzipped = gzipped_len(&dir.join(file))?;
        total += gzipped;
        report.record(
            SCENARIO,
            format!("{file}, gzipped"),
            gzipped as f64,
            "bytes",
            None,
        );
    }
    report.record(
        SCENARIO,
        "what a browser loads (wasm + bundled JS), gzipped",
        total as f64,
        "bytes",
        Some(Target::AtMost(TARGET_BYTES)),
    );
    Ok(())
}

fn gzipped_len(path: &Path) -> Result<usize, BenchError> {
    let bytes = std::fs::read(path)
        .map_err(|error| BenchError(format!("cannot read {}: {error}", path.display())))?;
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder
        .write_all(&bytes)
        .and_then(|()| encoder.finish())
        .map(|gz| gz.len())
        .map_err(|error| BenchError(format!("cannot gzip {}: {error}", path.display())))
}
