// Included by every fuzz target (not by the agent's corpus test): any one allocation over
// MAX_ALLOC aborts the run, which libFuzzer reports as a crash with the input. libFuzzer's own
// `-malloc_limit_mb` needs a sanitizer's malloc hooks, which a stable build has not.

/// Largest single allocation a decoder may make: 64 MiB (the largest input is 4 MiB).
const MAX_ALLOC: usize = 64 << 20;

struct LimitedAlloc;

fn check_alloc(size: usize) {
    if size > MAX_ALLOC {
        eprintln!("fuzz: one allocation of {size} bytes, over the {MAX_ALLOC}-byte limit");
        std::process::abort();
    }
}

unsafe impl std::alloc::GlobalAlloc for LimitedAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        check_alloc(layout.size());
        std::alloc::System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        check_alloc(layout.size());
        std::alloc::System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        check_alloc(new);
        std::alloc::System.realloc(ptr, layout, new)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        std::alloc::System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: LimitedAlloc = LimitedAlloc;
