// pkv/kvdump/h5_guard.h — a read-only HDF5 file driver that checks what HDF5 trusts.
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
#include <vector>

namespace pkv::h5 {

/// A file access property list (owned by the caller, close with H5Pclose) that selects
/// the guarded read-only driver; -1 if HDF5 refused to register it.
hid_t guarded_read_fapl();

/// What the driver found wrong in the last read it refused (empty if none), and clears it.
std::string take_guard_finding();

/// Variable-length strings read without HDF5's own conversion, which allocates each
/// declared length and copies the heap object's own size into it, trusting that the
/// two agree and that the object exists. pkv asks HDF5 only for the descriptors as
/// stored (32-bit length, heap collection address, object index) and takes each
/// string from its collection, read and checked here (check_global_heap), refusing a
/// descriptor whose object is missing or of another length. `obj` is an attribute
/// (is_attr) or a dataset of `n` strings; `error` says what was wrong, if anything.
struct StringsRead {
    std::vector<std::string> values;
    std::string error;
};
StringsRead read_vlen_strings(hid_t obj, bool is_attr, uint64_t n);

/// The collection check itself, on `size` bytes read at file offset `addr` (public for
/// tests): empty when the bytes are a well-formed collection (or a prefix of one, when
/// the collection is larger than what was read), otherwise what is wrong.
/// `size_bytes` is the file's "size of lengths" (2, 4 or 8, from the superblock).
std::string check_global_heap(const unsigned char* buf, size_t size, uint64_t addr, unsigned size_bytes, uint64_t eof);

}  // namespace pkv::h5
