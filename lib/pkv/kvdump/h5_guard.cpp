#include "pkv/kvdump/h5_guard.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <new>
#include <set>
#include <vector>

#include <fmt/format.h>

namespace pkv::h5 {

namespace {

// Global heap layout (HDF5 file format spec, "Global Heap Collection"): a 16-byte header
// ("GCOL", version 1, 3 reserved bytes, collection size as a length), then objects of
// [index u16][references u16][4 reserved][size as a length][data padded to 8 bytes];
// object 0 is the free space, whose size counts its own header.
constexpr size_t kSigBytes = 4;

uint64_t decode_le(const unsigned char* p, unsigned n) {
    uint64_t v = 0;
    for (unsigned i = n; i-- > 0;) v = (v << 8) | p[i];
    return v;
}

thread_local std::string g_finding;

/// check_global_heap, also listing the objects (index -> size) when `objects` is given.
std::string walk_global_heap(const unsigned char* buf, size_t size, uint64_t addr, unsigned size_bytes, uint64_t eof,
                             std::map<unsigned, std::pair<uint64_t, uint64_t>>* objects);

struct GuardFile {
    H5FD_t pub;  // must come first: HDF5 casts between the two
    int fd = -1;
    haddr_t eoa = 0, eof = 0;
    dev_t dev = 0;
    ino_t ino = 0;
    unsigned size_bytes = 8;  // superblock's "size of lengths"
};

struct SizeFields {
    unsigned offsets = 8, lengths = 8;
    uint64_t base = 0;  // where the superblock sits: file addresses count from there
};

// The superblock sits at 0 or at 512 * 2^k; its version decides where its "size of
// offsets" and "size of lengths" are.
SizeFields size_fields(int fd, uint64_t eof) {
    for (uint64_t at = 0; at + 16 <= eof; at = at == 0 ? 512 : at * 2) {
        unsigned char sb[16];
        if (pread(fd, sb, sizeof sb, static_cast<off_t>(at)) != static_cast<ssize_t>(sizeof sb)) break;
        if (std::memcmp(sb, "\x89HDF\r\n\x1a\n", 8) != 0) continue;
        auto valid = [](unsigned v) { return v == 2 || v == 4 || v == 8 ? v : 8u; };
        return sb[8] < 2 ? SizeFields{valid(sb[13]), valid(sb[14]), at} : SizeFields{valid(sb[9]), valid(sb[10]), at};
    }
    return {};
}

H5FD_t* guard_open(const char* name, unsigned flags, hid_t, haddr_t maxaddr) {
    if ((flags & H5F_ACC_RDWR) || (flags & H5F_ACC_CREAT) || (flags & H5F_ACC_TRUNC)) return nullptr;
    const int fd = open(name, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return nullptr;
    struct stat st {};
    if (fstat(fd, &st) != 0) {
        close(fd);
        return nullptr;
    }
    auto* f = new (std::nothrow) GuardFile();
    if (!f) {
        close(fd);
        return nullptr;
    }
    f->fd = fd;
    f->eof = static_cast<haddr_t>(st.st_size);
    f->dev = st.st_dev;
    f->ino = st.st_ino;
    f->size_bytes = size_fields(fd, f->eof).lengths;
    (void)maxaddr;
    return &f->pub;
}

herr_t guard_close(H5FD_t* file) {
    auto* f = reinterpret_cast<GuardFile*>(file);
    const int rc = close(f->fd);
    delete f;
    return rc == 0 ? 0 : -1;
}

int guard_cmp(const H5FD_t* a, const H5FD_t* b) {
    const auto* x = reinterpret_cast<const GuardFile*>(a);
    const auto* y = reinterpret_cast<const GuardFile*>(b);
    if (x->dev != y->dev) return x->dev < y->dev ? -1 : 1;
    if (x->ino != y->ino) return x->ino < y->ino ? -1 : 1;
    return 0;
}

herr_t guard_query(const H5FD_t*, unsigned long* flags) {
    // No metadata accumulation: each metadata read must arrive alone and typed.
    if (flags) *flags = H5FD_FEAT_DATA_SIEVE | H5FD_FEAT_AGGREGATE_SMALLDATA;
    return 0;
}

haddr_t guard_get_eoa(const H5FD_t* file, H5FD_mem_t) { return reinterpret_cast<const GuardFile*>(file)->eoa; }

herr_t guard_set_eoa(H5FD_t* file, H5FD_mem_t, haddr_t addr) {
    reinterpret_cast<GuardFile*>(file)->eoa = addr;
    return 0;
}

haddr_t guard_get_eof(const H5FD_t* file, H5FD_mem_t) { return reinterpret_cast<const GuardFile*>(file)->eof; }

herr_t guard_get_handle(H5FD_t* file, hid_t, void** handle) {
    if (!handle) return -1;
    *handle = &reinterpret_cast<GuardFile*>(file)->fd;
    return 0;
}

herr_t guard_read(H5FD_t* file, H5FD_mem_t type, hid_t, haddr_t addr, size_t size, void* buffer) {
    auto* f = reinterpret_cast<GuardFile*>(file);
    if (addr == HADDR_UNDEF || size > f->eoa || addr > f->eoa - size) {
        g_finding = fmt::format("read of {} bytes at byte {} past the end of the file's address space ({})", size, addr,
                                f->eoa);
        return -1;
    }
    auto* out = static_cast<unsigned char*>(buffer);
    size_t done = 0;
    while (done < size) {
        const ssize_t n = pread(f->fd, out + done, size - done, static_cast<off_t>(addr + done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            g_finding = fmt::format("read failed at byte {}: {}", addr + done, std::strerror(errno));
            return -1;
        }
        if (n == 0) {  // past the end of file: HDF5 expects zeros, as sec2 gives them
            std::memset(out + done, 0, size - done);
            break;
        }
        done += static_cast<size_t>(n);
    }
    // HDF5 hands global heap reads to the driver as raw data (H5FD_MEM_DRAW), so any
    // read that starts with a collection's signature and version is checked as one.
    if ((type == H5FD_MEM_GHEAP || type == H5FD_MEM_DRAW) && size >= 5 && std::memcmp(out, "GCOL\x01", 5) == 0) {
        std::string bad = check_global_heap(out, size, addr, f->size_bytes, f->eof);
        // A collection larger than this first read: HDF5 fetches only the rest next,
        // a read that does not start with the signature, so check the whole one now.
        const size_t header = 8 + f->size_bytes;
        const uint64_t total = size >= header ? decode_le(out + 8, f->size_bytes) : 0;
        if (bad.empty() && total > size) {
            std::vector<unsigned char> whole(static_cast<size_t>(total));
            if (pread(f->fd, whole.data(), whole.size(), static_cast<off_t>(addr)) != static_cast<ssize_t>(total))
                bad = fmt::format("global heap collection at byte {}: cannot read its {} bytes", addr, total);
            else bad = check_global_heap(whole.data(), whole.size(), addr, f->size_bytes, f->eof);
        }
        if (!bad.empty()) {
            g_finding = std::move(bad);
            return -1;
        }
    }
    return 0;
}

herr_t guard_write(H5FD_t*, H5FD_mem_t, hid_t, haddr_t, size_t, const void*) {
    g_finding = "the file is open read-only";
    return -1;
}

herr_t guard_truncate(H5FD_t*, hid_t, hbool_t) { return 0; }

H5FD_class_t make_class() {
    H5FD_class_t c{};
    c.name = "pkv_guarded_read";
    c.maxaddr = static_cast<haddr_t>(INT64_MAX);
    c.fc_degree = H5F_CLOSE_STRONG;
    c.open = guard_open;
    c.close = guard_close;
    c.cmp = guard_cmp;
    c.query = guard_query;
    c.get_eoa = guard_get_eoa;
    c.set_eoa = guard_set_eoa;
    c.get_eof = guard_get_eof;
    c.get_handle = guard_get_handle;
    c.read = guard_read;
    c.write = guard_write;
    c.truncate = guard_truncate;
    const H5FD_mem_t map[] = H5FD_FLMAP_DICHOTOMY;
    std::memcpy(c.fl_map, map, sizeof map);
    return c;
}

}  // namespace

std::string check_global_heap(const unsigned char* buf, size_t size, uint64_t addr, unsigned size_bytes, uint64_t eof) {
    return walk_global_heap(buf, size, addr, size_bytes, eof, nullptr);
}

namespace {

std::string walk_global_heap(const unsigned char* buf, size_t size, uint64_t addr, unsigned size_bytes, uint64_t eof,
                             std::map<unsigned, std::pair<uint64_t, uint64_t>>* objects) {
    const size_t header = kSigBytes + 4 + size_bytes, obj_header = 8 + size_bytes;
    const std::string at = fmt::format("global heap collection at byte {}", addr);
    if (size < header) return at + ": shorter than its header";
    if (std::memcmp(buf, "GCOL", kSigBytes) != 0) return at + ": expected signature GCOL";
    if (buf[4] != 1) return fmt::format("{}: expected version 1, got {}", at, buf[4]);
    const uint64_t total = decode_le(buf + 8, size_bytes);
    if (total < header || total > eof || addr > eof - total)
        return fmt::format("{}: collection size {} outside the file ({} bytes)", at, total, eof);
    // Only what was read can be checked: HDF5 first reads a fixed-size prefix, then the
    // whole collection once it knows the size.
    const uint64_t end = std::min<uint64_t>(total, size);
    std::set<unsigned> seen;
    uint64_t p = header;
    while (p < total) {
        if (total - p < obj_header) break;  // a tail too small for a header is free space
        if (p + obj_header > end) return {};
        const unsigned idx = static_cast<unsigned>(decode_le(buf + p, 2));
        const uint64_t osize = decode_le(buf + p + 8, size_bytes);
        uint64_t need = 0;
        if (idx == 0) {
            if (osize < obj_header || osize > total - p)
                return fmt::format("{}: free-space object of {} bytes at offset {} outside the collection ({} bytes)",
                                   at, osize, p, total);
            need = osize;
        } else {
            if (!seen.insert(idx).second) return fmt::format("{}: object {} appears twice", at, idx);
            if (objects) (*objects)[idx] = {p + obj_header, osize};
            const uint64_t room = total - p - obj_header;
            if (osize > room || ((osize + 7) & ~uint64_t{7}) > room)
                return fmt::format("{}: object {} of {} bytes runs past the collection's end ({} bytes)", at, idx,
                                   osize, total);
            need = obj_header + ((osize + 7) & ~uint64_t{7});
        }
        p += need;
    }
    return {};
}

}  // namespace

namespace {

constexpr const char* kRawTag = "pkv.vlen_string_descriptor";

// A conversion from a variable-length string to pkv's opaque descriptor type of the
// same size: HDF5 hands it the descriptors as stored, and it leaves them as they are.
herr_t raw_descriptors(hid_t src, hid_t dst, H5T_cdata_t* cdata, size_t, size_t, size_t, void*, void*, hid_t) {
    switch (cdata->command) {
        case H5T_CONV_INIT: {
            if (H5Tis_variable_str(src) <= 0 || H5Tget_class(dst) != H5T_OPAQUE) return -1;
            char* tag = H5Tget_tag(dst);
            const bool ours = tag && std::strcmp(tag, kRawTag) == 0;
            H5free_memory(tag);
            if (!ours || H5Tget_size(src) != H5Tget_size(dst)) return -1;
            cdata->need_bkg = H5T_BKG_NO;
            return 0;
        }
        case H5T_CONV_CONV:
        case H5T_CONV_FREE: return 0;
    }
    return -1;
}

// Registers raw_descriptors once per process; false when HDF5 refused it.
bool descriptor_conversion_registered() {
    static const bool registered = [] {
        hid_t vstr = H5Tcopy(H5T_C_S1), opaque = H5Tcreate(H5T_OPAQUE, 16);
        H5Tset_size(vstr, H5T_VARIABLE);
        H5Tset_tag(opaque, kRawTag);
        const bool ok = H5Tregister(H5T_PERS_SOFT, "pkv raw string descriptors", vstr, opaque, raw_descriptors) >= 0;
        H5Tclose(vstr);
        H5Tclose(opaque);
        return ok;
    }();
    return registered;
}

// len bytes at `at` into dst; false for a range outside the file's eof bytes or a short read.
bool read_at(int fd, uint64_t eof, uint64_t at, size_t len, unsigned char* dst) {
    return at <= eof && len <= eof - at && pread(fd, dst, len, static_cast<off_t>(at)) == static_cast<ssize_t>(len);
}

// The n descriptors of `item` bytes each as stored, through the conversion above (HDF5
// would otherwise allocate each declared length and copy the heap object's own size into
// it, trusting that the two agree and that the object exists). Sets error on failure.
std::vector<unsigned char> read_descriptors(hid_t obj, bool is_attr, uint64_t n, unsigned item, uint64_t eof,
                                            std::string& error) {
    std::vector<unsigned char> desc;
    const hid_t raw = H5Tcreate(H5T_OPAQUE, item);
    H5Tset_tag(raw, kRawTag);
    if (n > eof / item) error = fmt::format("{} strings cannot fit in a file of {} bytes", n, eof);
    if (error.empty()) {
        desc.resize(static_cast<size_t>(n * item));
        const herr_t st =
            is_attr ? H5Aread(obj, raw, desc.data()) : H5Dread(obj, raw, H5S_ALL, H5S_ALL, H5P_DEFAULT, desc.data());
        if (st < 0) error = "cannot read the string descriptors";
    }
    H5Tclose(raw);
    return desc;
}

// A global heap collection's bytes and its objects (index -> offset in the bytes, size).
using HeapObjects = std::map<unsigned, std::pair<uint64_t, uint64_t>>;
using Heap = std::pair<std::vector<unsigned char>, HeapObjects>;

// The collection at addr (string i points there), read and walked on first use and kept
// in heaps; nullptr with error set when it is missing or malformed.
const Heap* heap_at(std::map<uint64_t, Heap>& heaps, int fd, uint64_t eof, const SizeFields& sizes, uint64_t addr,
                    uint64_t i, std::string& error) {
    auto it = heaps.find(addr);
    if (it != heaps.end()) return &it->second;
    unsigned char head[16];
    const uint64_t total = read_at(fd, eof, addr, sizeof head, head) && std::memcmp(head, "GCOL", 4) == 0
                               ? decode_le(head + 8, sizes.lengths)
                               : 0;
    std::vector<unsigned char> c(total <= eof ? static_cast<size_t>(total) : 0);
    HeapObjects objects;
    if (c.empty() || !read_at(fd, eof, addr, c.size(), c.data()))
        error = fmt::format("string {} points to byte {}, which holds no global heap collection", i, addr);
    else error = walk_global_heap(c.data(), c.size(), addr, sizes.lengths, eof, &objects);
    if (!error.empty()) return nullptr;
    return &heaps.emplace(addr, std::make_pair(std::move(c), std::move(objects))).first->second;
}

// Decodes the descriptors (length u32, heap collection address, object index u32) into
// r.values, checking each against its heap object; stops at the first bad one (r.error).
void decode_strings(const std::vector<unsigned char>& desc, uint64_t n, int fd, uint64_t eof, const SizeFields& sizes,
                    StringsRead& r) {
    const unsigned item = 8 + sizes.offsets;
    std::map<uint64_t, Heap> heaps;
    for (uint64_t i = 0; r.error.empty() && i < n; ++i) {
        const unsigned char* d = desc.data() + i * item;
        const uint64_t len = decode_le(d, 4), rel = decode_le(d + 4, sizes.offsets);
        const unsigned idx = static_cast<unsigned>(decode_le(d + 4 + sizes.offsets, 4));
        if (rel == 0 && len == 0) {  // a null string
            r.values.emplace_back();
            continue;
        }
        if (rel > UINT64_MAX - sizes.base) {
            r.error = fmt::format("string {} points past the end of the file", i);
            break;
        }
        const uint64_t addr = rel + sizes.base;
        const Heap* heap = heap_at(heaps, fd, eof, sizes, addr, i, r.error);
        if (!heap) break;
        const auto obj_it = heap->second.find(idx);
        if (obj_it == heap->second.end()) {
            r.error = fmt::format(
                "string {} refers to object {} of the global heap collection at byte {}, which "
                "it lacks",
                i, idx, addr);
        } else if (obj_it->second.second != len) {
            r.error =
                fmt::format("string {} declares {} bytes, its heap object holds {}", i, len, obj_it->second.second);
        } else {
            const auto* p = reinterpret_cast<const char*>(heap->first.data() + obj_it->second.first);
            r.values.emplace_back(p, strnlen(p, static_cast<size_t>(len)));
        }
    }
}

}  // namespace

StringsRead read_vlen_strings(hid_t obj, bool is_attr, uint64_t n) {
    StringsRead r;
    if (!descriptor_conversion_registered()) return {{}, "cannot register the descriptor conversion"};
    std::string path(static_cast<size_t>(std::max<ssize_t>(H5Fget_name(obj, nullptr, 0), 0)), '\0');
    if (path.empty() || H5Fget_name(obj, path.data(), path.size() + 1) < 0) return {{}, "cannot name the file"};
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return {{}, fmt::format("cannot reopen the file: {}", std::strerror(errno))};
    struct stat st {};
    const uint64_t eof = fstat(fd, &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
    const SizeFields sizes = size_fields(fd, eof);
    const unsigned item = 8 + sizes.offsets;  // length u32, heap collection address, object index u32
    const std::vector<unsigned char> desc = read_descriptors(obj, is_attr, n, item, eof, r.error);
    if (r.error.empty()) decode_strings(desc, n, fd, eof, sizes, r);
    close(fd);
    if (!r.error.empty()) r.values.clear();
    return r;
}

hid_t guarded_read_fapl() {
    static const hid_t driver = [] {
        static const H5FD_class_t cls = make_class();
        return H5FDregister(&cls);
    }();
    if (driver < 0) return -1;
    const hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0) return -1;
    if (H5Pset_driver(fapl, driver, nullptr) < 0) {
        H5Pclose(fapl);
        return -1;
    }
    return fapl;
}

std::string take_guard_finding() {
    std::string s = std::move(g_finding);
    g_finding.clear();
    return s;
}

}  // namespace pkv::h5
