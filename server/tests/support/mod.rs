//! Helpers for integration tests that need more than one process: `mod support;` in a test file,
//! then `support::webdriver::Browser` for headless Chromium.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of these helpers"
)]

pub mod webdriver;
