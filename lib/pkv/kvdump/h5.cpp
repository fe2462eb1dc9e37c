#include "pkv/kvdump/h5.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/ranges.h>
#include <zlib.h>

#include "pkv/core/memory_budget.h"
#include "pkv/kvdump/h5_guard.h"

namespace pkv::h5 {

namespace {

struct StackDetail {
    std::string outer, inner, os;
};

herr_t walk_cb(unsigned n, const H5E_error2_t* e, void* data) {
    auto* s = static_cast<StackDetail*>(data);
    std::string desc = e->desc ? e->desc : "";
    if (desc.empty()) {
        char buf[256] = {0};
        if (H5Eget_msg(e->min_num, nullptr, buf, sizeof buf) > 0) desc = buf;
    }
    if (n == 0) s->outer = desc;
    if (!desc.empty()) s->inner = desc;
    // The low-level file driver reports errno as "error message = '<strerror>'":
    // that is the one piece a user can act on (full disk, permissions).
    const std::string key = "error message = '";
    const size_t p = desc.find(key);
    if (p != std::string::npos) {
        const size_t q = desc.find('\'', p + key.size());
        s->os = desc.substr(p + key.size(), q == std::string::npos ? std::string::npos : q - p - key.size());
    }
    return 0;
}

std::string stack_detail() {
    StackDetail s;
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, walk_cb, &s);
    H5Eclear2(H5E_DEFAULT);
    // A read the guarded driver refused says best what is wrong with the file.
    if (std::string guard = take_guard_finding(); !guard.empty()) return guard;
    std::string d = !s.os.empty() ? s.os : !s.inner.empty() ? s.inner : s.outer;
    if (d.size() > 200) d = d.substr(0, 200) + "...";
    return d.empty() ? "unknown HDF5 error" : d;
}

/// HDF5 reports a full disk through a generic write failure; the OS text decides.
ErrorCode refine(ErrorCode code, const std::string& detail) {
    if (detail.find("No space left") != std::string::npos || detail.find("Disk quota") != std::string::npos)
        return ErrorCode::io;
    return code;
}

Id space_1d(uint64_t n) {
    const hsize_t d = n;
    return Id(H5Screate_simple(1, &d, nullptr));
}

Id open_attr(hid_t obj, const std::string& where, const std::string& name) {
    silence_errors();
    const htri_t ex = H5Aexists(obj, name.c_str());
    if (ex <= 0) fail(ErrorCode::not_found, "{}: missing attribute '{}'", where, name);
    Id a(H5Aopen(obj, name.c_str(), H5P_DEFAULT));
    if (!a) fail_h5(ErrorCode::data_loss, where, "cannot open attribute '" + name + "'");
    return a;
}

/// Reads every element of a string attribute or dataset (`is_attr` picks H5Aread/H5Dread).
std::vector<std::string> read_strings(hid_t obj, hid_t type, hid_t space, bool is_attr, const std::string& where) {
    const hssize_t n = H5Sget_simple_extent_npoints(space);
    std::vector<std::string> out;
    if (n <= 0) return out;
    check_memory_budget(
        checked_mul(static_cast<uint64_t>(n), std::max<size_t>(H5Tget_size(type), sizeof(char*)), where), where);
    if (H5Tis_variable_str(type) > 0) {
        StringsRead r = read_vlen_strings(obj, is_attr, static_cast<uint64_t>(n));
        PKV_CHECK(r.error.empty(), data_loss, "{}: cannot read strings: {}", where, r.error);
        out = std::move(r.values);
    } else {
        const size_t size = H5Tget_size(type);
        Id mem(H5Tcopy(H5T_C_S1));
        H5Tset_size(mem.get(), size);
        std::vector<char> buf(size * static_cast<size_t>(n) + 1, 0);
        const herr_t st = is_attr ? H5Aread(obj, mem.get(), buf.data())
                                  : H5Dread(obj, mem.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data());
        if (st < 0) fail_h5(ErrorCode::data_loss, where, "cannot read strings");
        for (hssize_t i = 0; i < n; ++i) {
            const char* p = buf.data() + i * size;
            out.emplace_back(p, strnlen(p, size));
        }
    }
    return out;
}

void check_chunks(const File& f, hid_t dset, const std::string& name, const std::vector<uint64_t>& start,
                  const std::vector<uint64_t>& count);

template <typename T>
std::vector<T> read_1d_as(const File& f, const std::string& name, hid_t mem_type) {
    Id d = open_dataset(f, name);
    const auto shape = shape_of(f, d.get(), name);
    PKV_CHECK(shape.size() == 1, data_loss, "{}: expected rank 1, got {}", f.where(name), shape.size());
    check_stored(f, d.get(), name);
    check_memory_budget(checked_mul(shape[0], sizeof(T), f.where(name)), f.where(name));
    std::vector<T> out(shape[0]);
    check_chunks(f, d.get(), name, {0}, {shape[0]});
    if (!out.empty() && H5Dread(d.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0)
        fail_h5(ErrorCode::data_loss, f.where(name), "cannot read");
    return out;
}

Id block_space(hid_t dset, const std::vector<uint64_t>& start, const std::vector<uint64_t>& count, Id* mem) {
    Id file_space(H5Dget_space(dset));
    std::vector<hsize_t> s(start.begin(), start.end()), c(count.begin(), count.end());
    if (!file_space || H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, s.data(), nullptr, c.data(), nullptr) < 0)
        return Id();
    *mem = Id(H5Screate_simple(static_cast<int>(c.size()), c.data(), nullptr));
    return file_space;
}

std::string dims_text(const std::vector<uint64_t>& v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
    return s + "]";
}

}  // namespace

void silence_errors() {
    static const bool done = [] {
        // A file whose close failed (disk full) stays registered inside HDF5, and
        // HDF5's own exit handler would then crash flushing it; the process is
        // ending anyway and AtomicOutput has removed the file, so skip that handler.
        H5dont_atexit();
        return true;
    }();
    (void)done;
    // A thread-safe HDF5 keeps an error stack, and its printing, per thread (dump workers).
    thread_local const bool quiet = [] { return H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr) >= 0; }();
    (void)quiet;
}

void fail_h5(ErrorCode code, const std::string& where, const std::string& what) {
    const std::string detail = stack_detail();
    throw Error(refine(code, detail), where + ": " + what + ": " + detail);
}

Id& Id::operator=(Id&& o) noexcept {
    if (this != &o) {
        reset();
        id_ = o.id_;
        o.id_ = H5I_INVALID_HID;
    }
    return *this;
}

namespace {
herr_t close_any(hid_t id) {
    switch (H5Iget_type(id)) {
        case H5I_FILE: return H5Fclose(id);
        case H5I_GROUP: return H5Gclose(id);
        case H5I_DATATYPE: return H5Tclose(id);
        case H5I_DATASPACE: return H5Sclose(id);
        case H5I_DATASET: return H5Dclose(id);
        case H5I_ATTR: return H5Aclose(id);
        case H5I_GENPROP_LST: return H5Pclose(id);
        default: return 0;  // already invalid (e.g. its file was closed strongly)
    }
}
}  // namespace

void Id::reset() {
    if (id_ >= 0) {
        silence_errors();
        close_any(id_);
        H5Eclear2(H5E_DEFAULT);
    }
    id_ = H5I_INVALID_HID;
}

void Id::close_checked(const std::string& where) {
    if (id_ < 0) return;
    const hid_t id = id_;
    id_ = H5I_INVALID_HID;
    if (close_any(id) < 0) fail_h5(ErrorCode::io, where, "cannot close");
}

namespace {
Id file_access_plist(bool virtual_datasets) {
    Id fapl(H5Pcreate(H5P_FILE_ACCESS));
    // Strong close: closing the file really releases it even if a handle leaked.
    H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG);
    // 1.8 object headers allow dense attribute storage, so a long provenance record
    // (many text files) cannot overflow the 64 KiB header; HDF5 >= 1.8 reads the file.
    // A virtual dataset's layout message (version 4) exists from 1.10 on: such a file
    // lets HDF5 use it, everything else still takes the 1.8 versions (the low bound).
    H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V18, virtual_datasets ? H5F_LIBVER_V110 : H5F_LIBVER_V18);
    return fapl;
}
}  // namespace

File File::create(const std::string& path, bool virtual_datasets) {
    silence_errors();
    File f;
    f.path_ = path;
    Id fapl = file_access_plist(virtual_datasets);
    f.id_ = Id(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()));
    if (!f.id_) fail_h5(ErrorCode::io, path, "cannot create HDF5 file");
    return f;
}

File File::open_read(const std::string& path) {
    silence_errors();
    struct stat st {};
    if (stat(path.c_str(), &st) != 0) fail(ErrorCode::not_found, "{}: cannot open: {}", path, std::strerror(errno));
    File f;
    f.path_ = path;
    // The guarded driver checks the structures HDF5 trusts blindly (h5_guard.h).
    Id fapl(guarded_read_fapl());
    if (!fapl) fail_h5(ErrorCode::internal, path, "cannot set up the guarded HDF5 reader");
    H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG);
    f.id_ = Id(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()));
    if (!f.id_) fail_h5(ErrorCode::data_loss, path, "not a readable HDF5 file");
    f.size_ = static_cast<uint64_t>(st.st_size);
    return f;
}

File File::open_rw(const std::string& path) {
    silence_errors();
    File f;
    f.path_ = path;
    Id fapl(H5Pcreate(H5P_FILE_ACCESS));
    H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG);
    f.id_ = Id(H5Fopen(path.c_str(), H5F_ACC_RDWR, fapl.get()));
    if (!f.id_) fail_h5(ErrorCode::io, path, "cannot open HDF5 file for writing");
    return f;
}

void File::close() {
    if (!id_) return;
    if (H5Fflush(id_.get(), H5F_SCOPE_LOCAL) < 0) {
        // Take the message before closing: the close would push errors of its own.
        Error e(ErrorCode::io, "");
        try {
            fail_h5(ErrorCode::io, path_, "cannot flush");
        } catch (const Error& caught) {
            e = caught;
        }
        id_.reset();
        throw e;
    }
    id_.close_checked(path_);
}

Id make_f16_type() {
    silence_errors();
    Id t(H5Tcopy(H5T_IEEE_F32LE));
    // Fields first, then the size: set_size refuses to shrink below the current fields.
    if (!t || H5Tset_fields(t.get(), 15, 10, 5, 0, 10) < 0 || H5Tset_size(t.get(), 2) < 0 ||
        H5Tset_ebias(t.get(), 15) < 0 || H5Tset_order(t.get(), H5T_ORDER_LE) < 0)
        fail_h5(ErrorCode::internal, "hdf5", "cannot build the float16 type");
    return t;
}

Id make_vlen_string_type() {
    Id t(H5Tcopy(H5T_C_S1));
    H5Tset_size(t.get(), H5T_VARIABLE);
    H5Tset_cset(t.get(), H5T_CSET_UTF8);
    H5Tset_strpad(t.get(), H5T_STR_NULLTERM);
    return t;
}

bool is_f16_type(hid_t type) {
    if (H5Tget_class(type) != H5T_FLOAT || H5Tget_size(type) != 2 || H5Tget_order(type) != H5T_ORDER_LE) return false;
    size_t spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0;
    if (H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize) < 0) return false;
    return spos == 15 && epos == 10 && esize == 5 && mpos == 0 && msize == 10 && H5Tget_ebias(type) == 15;
}

std::string type_name(hid_t type) {
    const size_t bits = H5Tget_size(type) * 8;
    const bool be = H5Tget_order(type) == H5T_ORDER_BE;
    switch (H5Tget_class(type)) {
        case H5T_INTEGER:
            return (H5Tget_sign(type) == H5T_SGN_NONE ? "uint" : "int") + std::to_string(bits) + (be ? "be" : "");
        case H5T_FLOAT:
            if (bits == 16 && !is_f16_type(type)) return "float16(nonstandard)";
            return "float" + std::to_string(bits) + (be ? "be" : "");
        case H5T_STRING: return "string";
        case H5T_COMPOUND: return "compound";
        case H5T_ENUM: return "enum";
        case H5T_ARRAY: return "array";
        case H5T_VLEN: return "vlen";
        case H5T_OPAQUE: return "opaque";
        case H5T_BITFIELD: return "bitfield";
        case H5T_REFERENCE: return "reference";
        default: return "unknown";
    }
}

bool exists(const File& f, const std::string& name) {
    silence_errors();
    if (name.empty() || name[0] != '/') return false;
    size_t pos = 1;
    while (pos <= name.size()) {
        size_t next = name.find('/', pos);
        if (next == std::string::npos) next = name.size();
        const std::string prefix = name.substr(0, next);
        if (H5Lexists(f.id(), prefix.c_str(), H5P_DEFAULT) <= 0) {
            H5Eclear2(H5E_DEFAULT);
            return false;
        }
        pos = next + 1;
    }
    return true;
}

void create_group(const File& f, const std::string& name) {
    silence_errors();
    Id lcpl(H5Pcreate(H5P_LINK_CREATE));
    H5Pset_create_intermediate_group(lcpl.get(), 1);
    Id g(H5Gcreate2(f.id(), name.c_str(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT));
    if (!g) fail_h5(ErrorCode::io, f.where(name), "cannot create group");
}

Id open_dataset(const File& f, const std::string& name, hid_t dapl) {
    silence_errors();
    if (!exists(f, name)) fail(ErrorCode::not_found, "{}: missing dataset", f.where(name));
    Id d(H5Dopen2(f.id(), name.c_str(), dapl));
    if (!d) fail_h5(ErrorCode::data_loss, f.where(name), "cannot open dataset");
    return d;
}

std::vector<uint64_t> shape_of(const File& f, hid_t dset, const std::string& name) {
    Id space(H5Dget_space(dset));
    const int rank = space ? H5Sget_simple_extent_ndims(space.get()) : -1;
    if (rank < 0) fail_h5(ErrorCode::data_loss, f.where(name), "cannot read the dataspace");
    std::vector<hsize_t> d(static_cast<size_t>(rank));
    if (rank > 0) H5Sget_simple_extent_dims(space.get(), d.data(), nullptr);
    return std::vector<uint64_t>(d.begin(), d.end());
}

Id type_of(const File& f, hid_t dset, const std::string& name) {
    Id t(H5Dget_type(dset));
    if (!t) fail_h5(ErrorCode::data_loss, f.where(name), "cannot read the datatype");
    return t;
}

std::vector<uint64_t> chunks_of(hid_t dset) {
    Id dcpl(H5Dget_create_plist(dset));
    if (!dcpl || H5Pget_layout(dcpl.get()) != H5D_CHUNKED) return {};
    hsize_t c[H5S_MAX_RANK];
    const int r = H5Pget_chunk(dcpl.get(), H5S_MAX_RANK, c);
    if (r <= 0) return {};
    return std::vector<uint64_t>(c, c + r);
}

std::vector<std::string> filters_of(hid_t dset) {
    std::vector<std::string> out;
    Id dcpl(H5Dget_create_plist(dset));
    if (!dcpl) return out;
    const int n = H5Pget_nfilters(dcpl.get());
    for (int i = 0; i < n; ++i) {
        unsigned flags = 0, cd[8] = {0};
        size_t ncd = 8;
        char name[64] = {0};
        const H5Z_filter_t id =
            H5Pget_filter2(dcpl.get(), static_cast<unsigned>(i), &flags, &ncd, cd, sizeof name, name, nullptr);
        switch (id) {
            case H5Z_FILTER_DEFLATE: out.push_back("deflate(" + std::to_string(ncd > 0 ? cd[0] : 0) + ")"); break;
            case H5Z_FILTER_SHUFFLE: out.push_back("shuffle"); break;
            case H5Z_FILTER_FLETCHER32: out.push_back("fletcher32"); break;
            case H5Z_FILTER_SZIP: out.push_back("szip"); break;
            case H5Z_FILTER_NBIT: out.push_back("nbit"); break;
            case H5Z_FILTER_SCALEOFFSET: out.push_back("scaleoffset"); break;
            default: out.push_back("filter" + std::to_string(id)); break;
        }
    }
    return out;
}

uint64_t storage_bytes(hid_t dset) { return H5Dget_storage_size(dset); }

void check_stored(const File& f, hid_t dset, const std::string& name) {
    silence_errors();
    const std::string where = f.where(name);
    const std::vector<uint64_t> shape = shape_of(f, dset, name);
    Id type = type_of(f, dset, name);
    const size_t elem = H5Tget_size(type.get());
    PKV_CHECK(elem > 0, data_loss, "{}: datatype of size 0", where);
    uint64_t n = 1;
    for (uint64_t d : shape) n = checked_mul(n, d, where);
    const uint64_t declared = checked_mul(n, elem, where);
    const uint64_t stored = H5Dget_storage_size(dset);
    const uint64_t file_size = f.size_on_disk();
    PKV_CHECK(file_size == 0 || stored <= file_size, data_loss,
              "{}: declares {} bytes of storage in a file of {} bytes", where, stored, file_size);
    if (n == 0) return;
    Id dcpl(H5Dget_create_plist(dset));
    if (!dcpl) fail_h5(ErrorCode::data_loss, where, "cannot read the storage layout");
    const H5D_layout_t layout = H5Pget_layout(dcpl.get());
    if (layout == H5D_CHUNKED) {
        const std::vector<uint64_t> chunk = chunks_of(dset);
        PKV_CHECK(chunk.size() == shape.size(), data_loss, "{}: expected chunks of rank {}, got {}", where,
                  shape.size(), chunk.size());
        uint64_t per_chunk = elem, want = 1;
        for (size_t i = 0; i < shape.size(); ++i) {
            PKV_CHECK(chunk[i] > 0, data_loss, "{}: chunk dimension {} is 0", where, i);
            per_chunk = checked_mul(per_chunk, chunk[i], where);
            want = checked_mul(want, (shape[i] + chunk[i] - 1) / chunk[i], where);
        }
        // pkv writes shuffle then deflate, and check_chunks knows how to check those:
        // other filters could hand HDF5 chunks of any length.
        const std::vector<std::string> filters = filters_of(dset);
        const bool ok = filters.empty() || (filters.size() == 1 && filters[0].rfind("deflate", 0) == 0) ||
                        (filters.size() == 2 && filters[0] == "shuffle" && filters[1].rfind("deflate", 0) == 0);
        PKV_CHECK(ok, unsupported, "{}: expected no filters, deflate, or shuffle then deflate, got {}", where,
                  fmt::format("{}", fmt::join(filters, ", ")));
        PKV_CHECK(per_chunk <= kMaxChunkBytes, data_loss, "{}: expected chunks of at most {}, got {} ({} bytes)", where,
                  human_bytes(kMaxChunkBytes), dims_text(chunk), per_chunk);
        hsize_t have = 0;
        Id space(H5Dget_space(dset));
        if (!space || H5Dget_num_chunks(dset, space.get(), &have) < 0)
            fail_h5(ErrorCode::data_loss, where, "cannot count chunks");
        PKV_CHECK(have == want, data_loss,
                  "{}: shape {} in chunks {} needs {} stored chunks, got {} (a truncated or forged file)", where,
                  dims_text(shape), dims_text(chunk), want, have);
    } else if (layout == H5D_CONTIGUOUS || layout == H5D_COMPACT) {
        // HDF5 copies a compact dataset's extent out of its stored bytes unchecked.
        PKV_CHECK(stored >= declared, data_loss,
                  "{}: shape {} needs {} bytes of storage, got {} (a truncated or forged file)", where,
                  dims_text(shape), declared, stored);
    } else {
        // Virtual datasets read other files: pkv reads a joined dump's activations through
        // their shards itself (virtual_mappings), never through HDF5's mapping.
        fail(ErrorCode::unsupported, "{}: expected a chunked, contiguous or compact layout, got layout {}{}", where,
             static_cast<int>(layout), layout == H5D_VIRTUAL ? " (virtual)" : "");
    }
}

bool is_virtual(hid_t dset) {
    Id dcpl(H5Dget_create_plist(dset));
    return dcpl && H5Pget_layout(dcpl.get()) == H5D_VIRTUAL;
}

bool has_attr(hid_t obj, const std::string& name) {
    silence_errors();
    const htri_t r = H5Aexists(obj, name.c_str());
    H5Eclear2(H5E_DEFAULT);
    return r > 0;
}

namespace {
/// Creates (replacing any old one) an attribute of `type` over `space` and writes `data`.
void write_attr(hid_t obj, const std::string& where, const std::string& name, hid_t file_type, hid_t mem_type,
                hid_t space, const void* data) {
    silence_errors();
    if (H5Aexists(obj, name.c_str()) > 0 && H5Adelete(obj, name.c_str()) < 0)
        fail_h5(ErrorCode::io, where, "cannot replace attribute '" + name + "'");
    Id a(H5Acreate2(obj, name.c_str(), file_type, space, H5P_DEFAULT, H5P_DEFAULT));
    if (!a || H5Awrite(a.get(), mem_type, data) < 0)
        fail_h5(ErrorCode::io, where, "cannot write attribute '" + name + "'");
    a.close_checked(where);
}
}  // namespace

void write_attr_string(hid_t obj, const std::string& where, const std::string& name, const std::string& value) {
    Id type = make_vlen_string_type();
    Id space(H5Screate(H5S_SCALAR));
    const char* p = value.c_str();
    write_attr(obj, where, name, type.get(), type.get(), space.get(), &p);
}

void write_attr_int(hid_t obj, const std::string& where, const std::string& name, int64_t value) {
    Id space(H5Screate(H5S_SCALAR));
    // int32 on disk when it fits: numpy users get the natural type for counts.
    const bool small = value >= INT32_MIN && value <= INT32_MAX;
    write_attr(obj, where, name, small ? H5T_STD_I32LE : H5T_STD_I64LE, H5T_NATIVE_INT64, space.get(), &value);
}

void write_attr_strings(hid_t obj, const std::string& where, const std::string& name,
                        const std::vector<std::string>& values) {
    Id type = make_vlen_string_type();
    Id space = space_1d(values.size());
    std::vector<const char*> ptrs;
    for (const auto& v : values) ptrs.push_back(v.c_str());
    write_attr(obj, where, name, type.get(), type.get(), space.get(), ptrs.data());
}

std::string read_attr_string(hid_t obj, const std::string& where, const std::string& name) {
    Id a = open_attr(obj, where, name);
    Id type(H5Aget_type(a.get()));
    Id space(H5Aget_space(a.get()));
    PKV_CHECK(H5Tget_class(type.get()) == H5T_STRING, data_loss, "{}: attribute '{}': expected a string, got {}", where,
              name, type_name(type.get()));
    PKV_CHECK(H5Sget_simple_extent_npoints(space.get()) == 1, data_loss,
              "{}: attribute '{}': expected a single string, got {} elements", where, name,
              H5Sget_simple_extent_npoints(space.get()));
    return read_strings(a.get(), type.get(), space.get(), true, where + " attribute '" + name + "'").at(0);
}

int64_t read_attr_int(hid_t obj, const std::string& where, const std::string& name) {
    Id a = open_attr(obj, where, name);
    Id type(H5Aget_type(a.get()));
    Id space(H5Aget_space(a.get()));
    PKV_CHECK(H5Tget_class(type.get()) == H5T_INTEGER, data_loss, "{}: attribute '{}': expected an integer, got {}",
              where, name, type_name(type.get()));
    PKV_CHECK(H5Sget_simple_extent_npoints(space.get()) == 1, data_loss,
              "{}: attribute '{}': expected a single integer, got {} elements", where, name,
              H5Sget_simple_extent_npoints(space.get()));
    int64_t v = 0;
    if (H5Aread(a.get(), H5T_NATIVE_INT64, &v) < 0) fail_h5(ErrorCode::data_loss, where, "cannot read '" + name + "'");
    return v;
}

std::vector<std::string> read_attr_strings(hid_t obj, const std::string& where, const std::string& name) {
    Id a = open_attr(obj, where, name);
    Id type(H5Aget_type(a.get()));
    Id space(H5Aget_space(a.get()));
    PKV_CHECK(H5Tget_class(type.get()) == H5T_STRING, data_loss, "{}: attribute '{}': expected strings, got {}", where,
              name, type_name(type.get()));
    return read_strings(a.get(), type.get(), space.get(), true, where + " attribute '" + name + "'");
}

Id create_1d(const File& f, const std::string& name, hid_t file_type, uint64_t n) {
    silence_errors();
    Id space = space_1d(n);
    Id d(H5Dcreate2(f.id(), name.c_str(), file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    if (!d) fail_h5(ErrorCode::io, f.where(name), "cannot create dataset");
    return d;
}

void write_1d(const File& f, hid_t dset, const std::string& name, hid_t mem_type, uint64_t offset, uint64_t n,
              const void* data) {
    if (n == 0) return;
    write_block(f, dset, name, mem_type, {offset}, {n}, data);
}

void write_1d_strings(const File& f, hid_t dset, const std::string& name, const std::vector<std::string>& values) {
    if (values.empty()) return;
    Id type = make_vlen_string_type();
    std::vector<const char*> ptrs;
    for (const auto& v : values) ptrs.push_back(v.c_str());
    if (H5Dwrite(dset, type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()) < 0)
        fail_h5(ErrorCode::io, f.where(name), "cannot write");
}

std::vector<int64_t> read_1d_i64(const File& f, const std::string& name) {
    return read_1d_as<int64_t>(f, name, H5T_NATIVE_INT64);
}
std::vector<int32_t> read_1d_i32(const File& f, const std::string& name) {
    return read_1d_as<int32_t>(f, name, H5T_NATIVE_INT32);
}
std::vector<float> read_1d_f32(const File& f, const std::string& name) {
    return read_1d_as<float>(f, name, H5T_NATIVE_FLOAT);
}
std::vector<double> read_1d_f64(const File& f, const std::string& name) {
    return read_1d_as<double>(f, name, H5T_NATIVE_DOUBLE);
}

std::vector<std::string> read_1d_strings(const File& f, const std::string& name) {
    Id d = open_dataset(f, name);
    Id type = type_of(f, d.get(), name);
    PKV_CHECK(H5Tget_class(type.get()) == H5T_STRING, data_loss, "{}: expected dtype string, got {}", f.where(name),
              type_name(type.get()));
    Id space(H5Dget_space(d.get()));
    PKV_CHECK(H5Sget_simple_extent_ndims(space.get()) == 1, data_loss, "{}: expected rank 1, got {}", f.where(name),
              H5Sget_simple_extent_ndims(space.get()));
    check_stored(f, d.get(), name);
    check_chunks(f, d.get(), name, {0}, {static_cast<uint64_t>(H5Sget_simple_extent_npoints(space.get()))});
    return read_strings(d.get(), type.get(), space.get(), false, f.where(name));
}

void write_block(const File& f, hid_t dset, const std::string& name, hid_t mem_type, const std::vector<uint64_t>& start,
                 const std::vector<uint64_t>& count, const void* data) {
    silence_errors();
    Id mem;
    Id file_space = block_space(dset, start, count, &mem);
    if (!file_space || !mem)
        fail_h5(ErrorCode::internal, f.where(name),
                "cannot select block at " + dims_text(start) + " of " + dims_text(count));
    if (H5Dwrite(dset, mem_type, mem.get(), file_space.get(), H5P_DEFAULT, data) < 0)
        fail_h5(ErrorCode::io, f.where(name), "cannot write block at " + dims_text(start));
}

namespace {

// HDF5 1.10 copies a whole chunk out of what its filters returned without checking the
// length, and skips the filters a chunk's record says to skip: a deflate stream that
// inflates short, or a record that skips deflate, is a read past a buffer. So every
// chunk a read touches is first fetched raw and inflated here (its filters being none,
// deflate, or shuffle then deflate: check_stored), and must give exactly one chunk.
void check_chunks(const File& f, hid_t dset, const std::string& name, const std::vector<uint64_t>& start,
                  const std::vector<uint64_t>& count) {
    const std::vector<uint64_t> chunk = chunks_of(dset);
    if (chunk.empty() || chunk.size() != start.size()) return;
    const std::string where = f.where(name);
    const bool deflated = !filters_of(dset).empty();
    Id type(H5Dget_type(dset));
    uint64_t want = type ? H5Tget_size(type.get()) : 0;
    for (uint64_t c : chunk) want *= c;  // at most kMaxChunkBytes (check_stored)
    const size_t r = chunk.size();
    std::vector<uint64_t> first(r), last(r), k(r);
    for (size_t i = 0; i < r; ++i) {
        if (count[i] == 0) return;
        first[i] = k[i] = start[i] / chunk[i];
        last[i] = (start[i] + count[i] - 1) / chunk[i];
    }
    std::vector<unsigned char> raw, out(static_cast<size_t>(want) + 1);
    for (;;) {
        std::vector<hsize_t> offset(r);
        for (size_t i = 0; i < r; ++i) offset[i] = k[i] * chunk[i];
        hsize_t stored = 0;
        if (H5Dget_chunk_storage_size(dset, offset.data(), &stored) < 0)
            fail_h5(ErrorCode::data_loss, where,
                    "cannot find the chunk at " + dims_text({offset.begin(), offset.end()}));
        PKV_CHECK(stored <= want + want / 8 + 1024, data_loss, "{}: chunk at {} stores {} bytes for {} of data", where,
                  dims_text({offset.begin(), offset.end()}), stored, want);
        raw.resize(static_cast<size_t>(stored));
        uint32_t mask = 0;
        if (H5Dread_chunk(dset, H5P_DEFAULT, offset.data(), &mask, raw.data()) < 0)
            fail_h5(ErrorCode::data_loss, where,
                    "cannot read the chunk at " + dims_text({offset.begin(), offset.end()}));
        uLongf produced = static_cast<uLongf>(out.size());
        const bool good = deflated ? mask == 0 && uncompress(out.data(), &produced, raw.data(), raw.size()) == Z_OK &&
                                         produced == want
                                   : stored == want;
        PKV_CHECK(good, data_loss, "{}: chunk at {} does not hold {} bytes of data (a corrupt chunk)", where,
                  dims_text({offset.begin(), offset.end()}), want);
        size_t i = r;  // next chunk, last dimension fastest
        while (i-- > 0) {
            if (++k[i] <= last[i]) break;
            k[i] = first[i];
        }
        if (i == static_cast<size_t>(-1)) return;
    }
}

}  // namespace

void read_block(const File& f, hid_t dset, const std::string& name, hid_t mem_type, const std::vector<uint64_t>& start,
                const std::vector<uint64_t>& count, void* data) {
    silence_errors();
    // HDF5 would read a missing source as fill values: pkv reads shards itself.
    PKV_CHECK(!is_virtual(dset), unsupported, "{}: a virtual dataset is read through its sources, not directly",
              f.where(name));
    check_chunks(f, dset, name, start, count);
    Id mem;
    Id file_space = block_space(dset, start, count, &mem);
    if (!file_space || !mem)
        fail_h5(ErrorCode::data_loss, f.where(name),
                "cannot select block at " + dims_text(start) + " of " + dims_text(count));
    if (H5Dread(dset, mem_type, mem.get(), file_space.get(), H5P_DEFAULT, data) < 0)
        fail_h5(ErrorCode::data_loss, f.where(name), "cannot read block at " + dims_text(start));
}

}  // namespace pkv::h5
