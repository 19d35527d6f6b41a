//! `zonescaler`: the demo game's binary (the whole CLI comes from `main_with`).

use zonescaler_server::ExampleGamePlugin;

fn main() -> std::process::ExitCode {
    zonescaler_server::main_with(|app| {
        app.add_plugins(ExampleGamePlugin);
    })
}
