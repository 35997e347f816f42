// Copyright 2019 Octavian Oncescu

#![no_std]

//! A drop-in global allocator wrapper around the [mimalloc](https://github.com/microsoft/mimalloc) allocator.
//! Mimalloc is a general purpose, performance oriented allocator built by Microsoft.
//!
//! ## Usage
//! ```rust,ignore
//! use mimalloc::MiMalloc;
//!
//! #[global_allocator]
//! static GLOBAL: MiMalloc = MiMalloc;
//! ```
//!
//! ## Usage with secure mode
//! Using secure mode adds guard pages,
//! randomized allocation, encrypted free lists, etc. The performance penalty is usually
//! around 10% according to [mimalloc's](https://github.com/microsoft/mimalloc)
//! own benchmarks.
//!
//! To enable secure mode, put in `Cargo.toml`:
//! ```toml
//! [dependencies]
//! mimalloc = { version = "*", features = ["secure"] }
//! ```

extern crate libmimalloc_sys as ffi;

#[cfg(feature = "extended")]
mod extended;

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;
use ffi::*;

/// GATEHOUSE PATCH (vendor/README.md, 17): the alignment every mimalloc block has when its
/// size is a multiple of an alignment up to this (`MI_MAX_ALIGN_SIZE`): block sizes are
/// multiples of 8, and of 16 from 16 bytes up, and pages start their blocks 16-aligned.
const MI_MAX_ALIGN_SIZE: usize = 16;

/// GATEHOUSE PATCH (vendor/README.md, 17): whether a plain block of `size` is aligned to
/// `alignment`. mimalloc 3 serves `mi_malloc_aligned` from its fast path only up to 1 KiB; above
/// that it takes the plain path only for power-of-two sizes and over-allocates every other block
/// by its alignment (a slower path and a bigger block). Every Rust type's layout has a size that
/// is a multiple of its alignment, so nearly all requests take the plain calls here. Not with
/// padding after each block (`secure`, `debug`), which changes the block sizes.
#[inline]
fn plain_block_is_aligned(size: usize, alignment: usize) -> bool {
    !cfg!(any(
        feature = "secure",
        feature = "debug",
        feature = "debug_in_debug"
    )) && alignment <= MI_MAX_ALIGN_SIZE
        && size >= alignment
        && size % alignment == 0
}

/// Drop-in mimalloc global allocator.
///
/// ## Usage
/// ```rust,ignore
/// use mimalloc::MiMalloc;
///
/// #[global_allocator]
/// static GLOBAL: MiMalloc = MiMalloc;
/// ```
pub struct MiMalloc;

unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain_block_is_aligned(layout.size(), layout.align()) {
            return mi_malloc(layout.size()) as *mut u8;
        }
        mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain_block_is_aligned(layout.size(), layout.align()) {
            return mi_zalloc(layout.size()) as *mut u8;
        }
        mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi_free(ptr as *mut c_void);
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain_block_is_aligned(new_size, layout.align()) {
            return mi_realloc(ptr as *mut c_void, new_size) as *mut u8;
        }
        mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GATEHOUSE PATCH (vendor/README.md, 17): every size up to 1 100 bytes, many up to 4 KiB
    /// and a few beyond, at every alignment up to 4 KiB: the block is aligned, writable over its
    /// whole size, zeroed when asked, and keeps its bytes through a reallocation that grows it
    /// and one that shrinks it.
    #[test]
    fn gatehouse_patch_blocks_are_aligned_and_keep_their_bytes() {
        let alloc = MiMalloc;
        let sizes = (1..=1100).chain((1101..=4200).step_by(7)).chain([
            4095,
            4096,
            4097,
            5000,
            65_536,
            100_000,
            1 << 20,
        ]);
        for size in sizes {
            for shift in 0..=12 {
                let align = 1usize << shift;
                let layout = Layout::from_size_align(size, align).unwrap();
                let bigger = Layout::from_size_align(size * 2 + 8, align).unwrap();
                let smaller = Layout::from_size_align((size / 2).max(1), align).unwrap();
                unsafe {
                    let p = alloc.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size}, align {align}");
                    p.write_bytes(0xa5, size);
                    let p = alloc.realloc(p, layout, bigger.size());
                    assert_eq!(p as usize % align, 0, "grown: size {size}, align {align}");
                    assert!((0..size).all(|i| *p.add(i) == 0xa5));
                    p.add(size).write_bytes(0x5a, bigger.size() - size);
                    let p = alloc.realloc(p, bigger, smaller.size());
                    assert_eq!(p as usize % align, 0, "shrunk: size {size}, align {align}");
                    assert!((0..smaller.size()).all(|i| *p.add(i) == 0xa5));
                    alloc.dealloc(p, smaller);
                    let z = alloc.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "zeroed: size {size}, align {align}");
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    alloc.dealloc(z, layout);
                }
            }
        }
    }

    #[test]
    fn it_frees_allocated_memory() {
        unsafe {
            let layout = Layout::from_size_align(8, 8).unwrap();
            let alloc = MiMalloc;

            let ptr = alloc.alloc(layout);
            alloc.dealloc(ptr, layout);
        }
    }

    #[test]
    fn it_frees_allocated_big_memory() {
        unsafe {
            let layout = Layout::from_size_align(1 << 20, 32).unwrap();
            let alloc = MiMalloc;

            let ptr = alloc.alloc(layout);
            alloc.dealloc(ptr, layout);
        }
    }

    #[test]
    fn it_frees_zero_allocated_memory() {
        unsafe {
            let layout = Layout::from_size_align(8, 8).unwrap();
            let alloc = MiMalloc;

            let ptr = alloc.alloc_zeroed(layout);
            alloc.dealloc(ptr, layout);
        }
    }

    #[test]
    fn it_frees_zero_allocated_big_memory() {
        unsafe {
            let layout = Layout::from_size_align(1 << 20, 32).unwrap();
            let alloc = MiMalloc;

            let ptr = alloc.alloc_zeroed(layout);
            alloc.dealloc(ptr, layout);
        }
    }

    #[test]
    fn it_frees_reallocated_memory() {
        unsafe {
            let layout = Layout::from_size_align(8, 8).unwrap();
            let alloc = MiMalloc;

            let ptr = alloc.alloc(layout);
            let ptr = alloc.realloc(ptr, layout, 16);
            alloc.dealloc(ptr, layout);
        }
    }

    #[test]
    fn it_frees_reallocated_big_memory() {
        unsafe {
            let layout = Layout::from_size_align(1 << 20, 32).unwrap();
            let alloc = MiMalloc;

            let ptr = alloc.alloc(layout);
            let ptr = alloc.realloc(ptr, layout, 2 << 20);
            alloc.dealloc(ptr, layout);
        }
    }
}
