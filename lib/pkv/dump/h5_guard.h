// pkv/dump/h5_guard.h — a read-only HDF5 file driver that checks what HDF5 trusts.
//
// The system HDF5 library (1.10) parses some on-disk structures with assertions only,
// which release builds compile out. The one pkv's fuzzing hit is the global heap
// collection ("GCOL"), where variable-length strings live: an object size past the
// end of its collection makes H5HG_read copy beyond its buffer, and an object of size
// 0 (or one whose size wraps the address) makes the collection parser loop forever.
// pkv opens files for reading through this driver, which reads with pread() like
// HDF5's sec2 driver and checks every global heap collection as it is read, before
// HDF5 parses it: a bad one fails the read, and the error names what was wrong
// ("global heap collection at byte 2048: object 1 of 65552 bytes runs past the
// collection's end (4096 bytes)"). Everything else HDF5 reads passes through as is.
//
// The driver never writes; metadata accumulation is off so that every metadata read
// reaches it whole, at its own address.
#pragma once

#include <hdf5.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace pkv::h5 {

/// A file access property list (owned by the caller, close with H5Pclose) that selects
/// the guarded read-only driver; -1 if HDF5 refused to register it.
hid_t guarded_read_fapl();

/// What the driver found wrong in the last read it refused (empty if none), and clears it.
std::string take_guard_finding();

/// Checks the on-disk descriptors (32-bit length, heap collection address, object
/// index) of `n` variable-length strings stored contiguously at byte `offset` of
/// `path` against the collections they point to: empty when each names an object of a
/// well-formed collection holding exactly its length, otherwise what is wrong. HDF5
/// allocates the declared length, then copies the object's own size into it.
std::string check_vlen_strings(const std::string& path, uint64_t offset, uint64_t n);

/// The collection check itself, on `size` bytes read at file offset `addr` (public for
/// tests): empty when the bytes are a well-formed collection (or a prefix of one, when
/// the collection is larger than what was read), otherwise what is wrong.
/// `size_bytes` is the file's "size of lengths" (2, 4 or 8, from the superblock).
std::string check_global_heap(const unsigned char* buf, size_t size, uint64_t addr, unsigned size_bytes,
                              uint64_t eof);

}  // namespace pkv::h5
