//! The terminal: colour when a person reads it, a spinner on stderr while the server is
//! awaited, and plain text for pipes and files.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Whether stdout gets colour: a terminal, and `NO_COLOR` unset (no-color.org).
pub(crate) fn colour_stdout() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn colour_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn paint(on: bool, code: &str, text: &str) -> String {
    if on {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// For stderr.
pub(crate) fn red(text: &str) -> String {
    paint(colour_stderr(), "1;31", text)
}

/// For stdout.
pub(crate) fn bold(text: &str) -> String {
    paint(colour_stdout(), "1", text)
}

/// For stdout, when `on`: `code` is an SGR code such as `36` (cyan).
pub(crate) fn colour(on: bool, code: &str, text: &str) -> String {
    paint(on, code, text)
}

/// A line on stderr that turns while the server is awaited; shown only on a terminal,
/// so that pipes and log files get no control characters.
#[derive(Debug, Clone)]
pub(crate) struct Spinner {
    /// What it says; `None` hides it.
    message: Arc<Mutex<Option<String>>>,
}

impl Spinner {
    /// Starts the spinner's task (on the current runtime), hidden.
    pub(crate) fn start() -> Self {
        let spinner = Self {
            message: Arc::new(Mutex::new(None)),
        };
        if std::io::stderr().is_terminal() {
            let message = Arc::downgrade(&spinner.message);
            tokio::spawn(async move {
                const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
                let mut shown = false;
                for frame in FRAMES.iter().cycle() {
                    // Ends when the spinner is dropped.
                    let Some(message) = message.upgrade() else {
                        break;
                    };
                    draw(&message, *frame, &mut shown);
                    drop(message);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
        spinner
    }

    /// Shows `text` next to the spinner (on a terminal).
    pub(crate) fn show(&self, text: impl Into<String>) {
        *self.lock() = Some(text.into());
    }

    /// Hides the spinner, clearing its line at once so that output can follow.
    pub(crate) fn hide(&self) {
        if self.lock().take().is_some() && std::io::stderr().is_terminal() {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[2K");
            let _ = stderr.flush();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.message.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One frame: `text` after the spinner, or a cleared line once it is hidden.
fn draw(message: &Mutex<Option<String>>, frame: char, shown: &mut bool) {
    let text = message
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut stderr = std::io::stderr().lock();
    match text {
        Some(text) => {
            let _ = write!(stderr, "\r\x1b[2K{frame} {text}");
            *shown = true;
        }
        None if *shown => {
            let _ = write!(stderr, "\r\x1b[2K");
            *shown = false;
        }
        None => {}
    }
    let _ = stderr.flush();
}

/// Runs `work` with a spinner saying `what` (on a terminal) until it completes.
pub(crate) async fn while_waiting<T>(what: &str, work: impl Future<Output = T>) -> T {
    let spinner = Spinner::start();
    spinner.show(format!("{what}…"));
    let result = work.await;
    spinner.hide();
    result
}
