//! [`ReadBuffer`]: a 16-byte-aligned buffer for socket reads, so that frames
//! that start at its beginning can be read in place.

/// A zeroed, 16-byte-aligned read buffer.
#[derive(Debug)]
pub(crate) struct ReadBuffer(Vec<u128>);

impl ReadBuffer {
    /// A buffer of `bytes` bytes (rounded up to 16).
    pub(crate) fn new(bytes: usize) -> Self {
        Self(vec![0; bytes.div_ceil(16)])
    }

    /// The buffer as bytes to read into.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        let len = std::mem::size_of_val(self.0.as_slice());
        // SAFETY: u128 has no padding and every byte pattern is a valid
        // u128, so its storage may be viewed and written as bytes; the length
        // is exact and the borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<u8>(), len) }
    }
}
