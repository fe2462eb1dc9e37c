// pkv/kvdump/h5.h — a small RAII layer over the HDF5 C API, used by the KV dump code.
//
// Every failure becomes a pkv::Error whose message names "<file>::<object>", then
// what pkv tried and what HDF5 (or the operating system) said, on one line:
//   "dump.h5::/k_post: cannot write hyperslab: No space left on device"
// HDF5's own automatic error printing is switched off by the first call into this
// layer, so nothing else reaches stderr.
//
// Handles are move-only and close themselves; predefined HDF5 types such as
// H5T_NATIVE_INT are never wrapped (they must not be closed).
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

#include "pkv/core/error.h"

namespace pkv::h5 {

/// Turns off HDF5's automatic error-stack printing for the calling thread (idempotent).
void silence_errors();

/// Throws pkv::Error(code, "<where>: <what>: <HDF5 detail>"), taking the detail from the
/// current HDF5 error stack (the operating system's message when there is one).
[[noreturn]] void fail_h5(ErrorCode code, const std::string& where, const std::string& what);

/// An owned HDF5 identifier of any kind (file, group, dataset, dataspace, datatype,
/// property list, attribute); closed with the matching H5?close.
class Id {
public:
    Id() = default;
    explicit Id(hid_t id) : id_(id) {}
    Id(Id&& o) noexcept : id_(o.id_) { o.id_ = H5I_INVALID_HID; }
    Id& operator=(Id&& o) noexcept;
    Id(const Id&) = delete;
    Id& operator=(const Id&) = delete;
    ~Id() { reset(); }
    hid_t get() const { return id_; }
    explicit operator bool() const { return id_ >= 0; }
    /// Closes quietly (errors on close are ignored: used on unwinding paths).
    void reset();
    /// Closes and reports a failure as io, naming `where` (flushes can fail here).
    void close_checked(const std::string& where);

private:
    hid_t id_ = H5I_INVALID_HID;
};

/// An open HDF5 file plus the name used in messages.
class File {
public:
    /// Creates (truncating) a file; failures are io. The file keeps to HDF5 1.8 object
    /// versions; `virtual_datasets` allows 1.10 ones, which a virtual dataset's layout needs.
    static File create(const std::string& path, bool virtual_datasets = false);
    /// Opens read-only; a missing file is not_found, anything HDF5 cannot open is data_loss.
    static File open_read(const std::string& path);
    /// Opens read-write (tests and repair tools).
    static File open_rw(const std::string& path);

    hid_t id() const { return id_.get(); }
    const std::string& path() const { return path_; }
    /// "<path>::<object>", the prefix of every message about that object.
    std::string where(const std::string& object) const { return path_ + "::" + object; }
    /// Flushes and closes; a failure (full disk) is io.
    void close();
    /// Size of the file on disk when it was opened for reading (0 for created files).
    uint64_t size_on_disk() const { return size_; }

private:
    Id id_;
    std::string path_;
    uint64_t size_ = 0;
};

// --- types --------------------------------------------------------------------------
/// IEEE binary16, little-endian, built from a copy of IEEE f32 (HDF5 1.10 has no
/// predefined half type). pkv converts values itself; HDF5 only moves bytes.
Id make_f16_type();
/// Variable-length UTF-8 string type.
Id make_vlen_string_type();
/// True for a 2-byte little-endian IEEE binary16 layout (sign 15, exponent 10..14, bias 15).
bool is_f16_type(hid_t type);
/// Short human name of a datatype: "float16", "float32", "int32", "uint8", "string", "compound", ...
std::string type_name(hid_t type);

// --- objects --------------------------------------------------------------------------
/// True if every component of the absolute path `name` exists (no error when a group is missing).
bool exists(const File& f, const std::string& name);
/// Creates a group (and missing parents); io on failure.
void create_group(const File& f, const std::string& name);
Id open_dataset(const File& f, const std::string& name, hid_t dapl = H5P_DEFAULT);
/// Rank and dimensions of a dataset.
std::vector<uint64_t> shape_of(const File& f, hid_t dset, const std::string& name);
/// The dataset's datatype (owned).
Id type_of(const File& f, hid_t dset, const std::string& name);
/// Chunk dimensions, empty when the layout is not chunked.
std::vector<uint64_t> chunks_of(hid_t dset);
/// Names of the filters in the pipeline ("shuffle", "deflate", ...).
std::vector<std::string> filters_of(hid_t dset);
/// Bytes the dataset's data occupy in the file.
uint64_t storage_bytes(hid_t dset);
/// Largest chunk pkv reads (bytes of one uncompressed chunk): HDF5 allocates a whole
/// chunk to read any part of it, so a forged chunk shape could otherwise ask for
/// gigabytes. pkv writes chunks of [1, 1, <= 1024, head_dim] float16 (256 KiB at D = 128).
constexpr uint64_t kMaxChunkBytes = uint64_t{256} << 20;
/// Checks, before anything is read, that the file really holds what the dataset's
/// extent declares: a chunked dataset has every chunk stored and chunks of at most
/// kMaxChunkBytes; a contiguous one stores extent x element size bytes within the
/// file. data_loss naming "<file>::<name>", declared vs stored, otherwise.
void check_stored(const File& f, hid_t dset, const std::string& name);

// --- virtual datasets -------------------------------------------------------------------
/// True for a virtual dataset (layout H5D_VIRTUAL).
bool is_virtual(hid_t dset);
/// One mapping of a virtual dataset: its block [start, start + count) is the whole of
/// dataset `dataset` in file `file`, a name relative to the folder of the virtual
/// dataset's file. (HDF5 does not store the extent of a whole-source selection: a reader
/// must check that the source's extent is `count`.)
struct VirtualMapping {
    std::string file, dataset;
    std::vector<uint64_t> start, count;
};
/// Most mappings pkv reads from one virtual dataset (a forged count stays cheap).
constexpr size_t kMaxVirtualMappings = 65536;
/// The mappings of a virtual dataset, in stored order. data_loss naming "<file>::<name>"
/// unless there are 1 to kMaxVirtualMappings of them and each maps a whole source
/// dataset (selection "all", or one block from the origin) onto one block of the
/// virtual dataset, with names of 1 to 4096 bytes: nothing else is what pkv writes.
/// HDF5 is never asked to read through the mappings.
std::vector<VirtualMapping> virtual_mappings(const File& f, hid_t dset, const std::string& name);
/// Creates a virtual dataset `name` of `file_type` and `shape` from `mappings`, with
/// `fill` (one element of file_type) where no mapping reaches or a source is missing
/// (readers other than pkv's see that value); io on failure.
Id create_virtual(const File& f, const std::string& name, hid_t file_type, const std::vector<uint64_t>& shape,
                  const std::vector<VirtualMapping>& mappings, const void* fill);

// --- attributes -----------------------------------------------------------------------
bool has_attr(hid_t obj, const std::string& name);
void write_attr_string(hid_t obj, const std::string& where, const std::string& name, const std::string& value);
void write_attr_int(hid_t obj, const std::string& where, const std::string& name, int64_t value);
void write_attr_strings(hid_t obj, const std::string& where, const std::string& name,
                        const std::vector<std::string>& values);
/// Reads a scalar string attribute (variable or fixed length); not_found when absent,
/// data_loss when it is not a scalar string.
std::string read_attr_string(hid_t obj, const std::string& where, const std::string& name);
/// Reads a scalar integer attribute; data_loss when it is not an integer.
int64_t read_attr_int(hid_t obj, const std::string& where, const std::string& name);
/// Reads a 1-D (or scalar) string attribute.
std::vector<std::string> read_attr_strings(hid_t obj, const std::string& where, const std::string& name);

// --- 1-D datasets -----------------------------------------------------------------------
/// Creates a contiguous 1-D dataset of `n` elements of `file_type` and returns it.
Id create_1d(const File& f, const std::string& name, hid_t file_type, uint64_t n);
/// Writes `n` elements of `mem_type` from `data` at [offset, offset + n).
void write_1d(const File& f, hid_t dset, const std::string& name, hid_t mem_type, uint64_t offset, uint64_t n,
              const void* data);
void write_1d_strings(const File& f, hid_t dset, const std::string& name, const std::vector<std::string>& values);
/// Whole 1-D dataset, converted by HDF5 to the requested native type, after
/// check_stored and a memory-budget check (pkv/core/memory_budget.h).
std::vector<int64_t> read_1d_i64(const File& f, const std::string& name);
std::vector<int32_t> read_1d_i32(const File& f, const std::string& name);
std::vector<float> read_1d_f32(const File& f, const std::string& name);
std::vector<double> read_1d_f64(const File& f, const std::string& name);
std::vector<std::string> read_1d_strings(const File& f, const std::string& name);

// --- hyperslabs -------------------------------------------------------------------------
/// Writes a dense block of `count` at `start` from `data` (memory laid out as `count`, C order).
void write_block(const File& f, hid_t dset, const std::string& name, hid_t mem_type, const std::vector<uint64_t>& start,
                 const std::vector<uint64_t>& count, const void* data);
/// Reads a dense block of `count` at `start` into `data`.
void read_block(const File& f, hid_t dset, const std::string& name, hid_t mem_type, const std::vector<uint64_t>& start,
                const std::vector<uint64_t>& count, void* data);

}  // namespace pkv::h5
