//! Helpers for integration tests that need more than one process: `mod support;` in a test file,
//! then `support::webdriver::Browser` for headless Chromium and `support::cluster::LocalCluster`
//! for a real `zonescaler up` (with `zonescaler bots` against it).
#![allow(
    dead_code,
    reason = "each test binary uses a different part of these helpers"
)]

pub mod cluster;
pub mod watchdog;
pub mod webdriver;
