//! Checked access to a guest's linear memory from host functions: every read and write is
//! bounds-checked, and values handed to the guest are copied into memory the guest allocated
//! (`proxy_on_memory_allocate`, else `malloc`). A bad pointer traps the VM: it is a plugin bug,
//! and returning an error status the SDK does not expect would only make it panic later.

use wasmtime::{Caller, Memory};

use super::state::HostState;

fn memory(caller: &Caller<'_, HostState>) -> wasmtime::Result<Memory> {
    caller
        .data()
        .memory
        .ok_or_else(|| wasmtime::Error::msg("the module exports no memory"))
}

/// The byte range `len` bytes at `ptr` cover in a memory of `memory_len` bytes; `None` when
/// any of it lies outside (or the arithmetic would overflow).
pub fn guest_range(memory_len: usize, ptr: u32, len: usize) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(ptr).ok()?;
    let end = start.checked_add(len)?;
    (end <= memory_len).then_some(start..end)
}

fn out_of_bounds(ptr: u32, len: usize) -> wasmtime::Error {
    wasmtime::Error::msg(format!("guest range {ptr}+{len} is out of bounds"))
}

/// Copies `len` bytes at `ptr` out of the guest.
pub fn read(caller: &Caller<'_, HostState>, ptr: u32, len: u32) -> wasmtime::Result<Vec<u8>> {
    read_prefix(caller, ptr, len, usize::MAX)
}

/// Checks that `len` bytes at `ptr` lie in the guest's memory and copies at most `max` of them.
pub fn read_prefix(
    caller: &Caller<'_, HostState>,
    ptr: u32,
    len: u32,
    max: usize,
) -> wasmtime::Result<Vec<u8>> {
    let memory = memory(caller)?;
    let data = memory.data(caller);
    let len = usize::try_from(len)?;
    guest_range(data.len(), ptr, len)
        .map(|range| data[range.start..range.start + len.min(max)].to_vec())
        .ok_or_else(|| out_of_bounds(ptr, len))
}

/// The guest's bytes `len` at `ptr`, to write in place (nothing is allocated on the host).
pub fn guest_slice_mut<'a>(
    caller: &'a mut Caller<'_, HostState>,
    ptr: u32,
    len: u32,
) -> wasmtime::Result<&'a mut [u8]> {
    let memory = memory(caller)?;
    let data = memory.data_mut(caller);
    let len = usize::try_from(len)?;
    let range = guest_range(data.len(), ptr, len).ok_or_else(|| out_of_bounds(ptr, len))?;
    Ok(&mut data[range])
}

/// Runs `f` on the guest's bytes at each of `ranges` (pointer, length) together with the host
/// state, copying nothing: the common host call reads a key (and a value) only to look it up.
pub fn with_guest<const N: usize, R>(
    caller: &mut Caller<'_, HostState>,
    ranges: [(u32, u32); N],
    f: impl FnOnce([&[u8]; N], &mut HostState) -> R,
) -> wasmtime::Result<R> {
    let memory = memory(caller)?;
    let (data, state) = memory.data_and_store_mut(caller);
    let data: &[u8] = data;
    let mut slices: [&[u8]; N] = [&[]; N];
    for (slice, (ptr, len)) in slices.iter_mut().zip(ranges) {
        let len = usize::try_from(len)?;
        let range = guest_range(data.len(), ptr, len).ok_or_else(|| out_of_bounds(ptr, len))?;
        *slice = &data[range];
    }
    Ok(f(slices, state))
}

/// Guest bytes as text (lossily: header names and keys are ASCII in practice).
pub fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// Reads a UTF-8 string (lossily: header names and property paths are ASCII in practice).
pub fn read_string(caller: &Caller<'_, HostState>, ptr: u32, len: u32) -> wasmtime::Result<String> {
    let bytes = read(caller, ptr, len)?;
    Ok(String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

fn write(caller: &mut Caller<'_, HostState>, ptr: u32, bytes: &[u8]) -> wasmtime::Result<()> {
    let memory = memory(caller)?;
    let data = memory.data_mut(caller);
    let range =
        guest_range(data.len(), ptr, bytes.len()).ok_or_else(|| out_of_bounds(ptr, bytes.len()))?;
    data[range].copy_from_slice(bytes);
    Ok(())
}

pub fn write_u32(caller: &mut Caller<'_, HostState>, ptr: u32, value: u32) -> wasmtime::Result<()> {
    write(caller, ptr, &value.to_le_bytes())
}

pub fn write_u64(caller: &mut Caller<'_, HostState>, ptr: u32, value: u64) -> wasmtime::Result<()> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Copies `bytes` into guest-allocated memory and stores its address and size at `data_out`
/// and `size_out` (the ABI's way of returning a buffer). The guest owns the copy.
pub fn give(
    caller: &mut Caller<'_, HostState>,
    bytes: &[u8],
    data_out: u32,
    size_out: u32,
) -> wasmtime::Result<()> {
    let size = u32::try_from(bytes.len())?;
    // Moved out for the call and back (not cloned: a clone bumps a reference count shared by
    // every thread's VMs).
    let allocate = caller
        .data_mut()
        .allocator
        .take()
        .ok_or_else(|| wasmtime::Error::msg("the module exports no allocator"))?;
    let called = allocate.call(&mut *caller, size);
    caller.data_mut().allocator = Some(allocate);
    let address = called?;
    if address == 0 && size > 0 {
        return Err(wasmtime::Error::msg("the guest allocator returned null"));
    }
    write(caller, address, bytes)?;
    write_u32(caller, data_out, address)?;
    write_u32(caller, size_out, size)
}

#[cfg(test)]
mod properties {
    use super::guest_range;
    use proptest::prelude::*;

    proptest! {
        /// Any pointer and length a guest passes: a range inside the memory, or none; never a
        /// panic or an overflow.
        #[test]
        fn ranges_are_inside_the_memory_or_refused(memory in 0usize..1 << 20, ptr: u32, len in prop_oneof![0usize..1 << 21, Just(usize::MAX)]) {
            match guest_range(memory, ptr, len) {
                Some(range) => {
                    prop_assert!(range.end <= memory);
                    prop_assert_eq!(range.len(), len);
                    prop_assert_eq!(range.start, ptr as usize);
                }
                None => prop_assert!((ptr as usize).checked_add(len).is_none_or(|end| end > memory)),
            }
        }
    }
}
