//! Kernel half of exitwatch: records which threads sleep in the waits that hang programs
//! at exit, and which processes are exiting. The agent reads the maps and decides.
#![no_std]
#![no_main]
// Every `unsafe` block here is a claim the verifier only partly checks: say which.
#![deny(clippy::undocumented_unsafe_blocks)]

mod exit_phase;
mod floor;
mod lifecycle;
mod maps;
mod sleeps;
mod task_storage;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
