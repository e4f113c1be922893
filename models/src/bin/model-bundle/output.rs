//! Printing: standard output that ends quietly when its reader goes away, and error chains
//! with each cause printed once.

use std::io::Write;

/// Writes `text` to standard output; exits quietly (status 0) when the reader closed the pipe,
/// as `model-bundle inspect X | head` does.
pub fn print(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let result = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
    if let Err(e) = result {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("model-bundle: cannot write to standard output: {e}");
        std::process::exit(2);
    }
}

/// Prints an error and its causes, each once (`defect_shared::error_chain`).
pub fn error(err: &anyhow::Error) {
    eprintln!(
        "model-bundle: error: {}",
        defect_shared::error_chain::line(err.chain())
    );
}
