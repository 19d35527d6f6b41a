//! `zonescaler-arena`: the arena game with the whole ZoneScaler command line (`shard`, `up`,
//! `ticket`, `keygen`). Try `zonescaler-arena up --world assets/worlds/arena.toml`.

use std::process::ExitCode;

fn main() -> ExitCode {
    zonescaler_server::main_with(|app| {
        app.add_plugins(zonescaler_arena::ArenaPlugin::default());
    })
}
