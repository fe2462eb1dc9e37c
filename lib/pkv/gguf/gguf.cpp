#include "pkv/gguf/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "pkv/core/error.h"

namespace pkv {

namespace {

constexpr uint32_t kMaxDims = 4;
constexpr int kMaxArrayDepth = 8;
// Each parsed array element costs ~50 bytes of memory however small it is on disk, so
// the element total is capped well above real tokenizers (~1M entries for 256k vocabs).
constexpr uint64_t kMaxArrayElements = uint64_t{1} << 25;
constexpr uint32_t kDefaultAlignment = 32;

// Renders raw bytes for an error message: printable ASCII as is, the rest as \xNN.
std::string escape_bytes(const uint8_t* p, size_t n) {
    std::string s;
    for (size_t i = 0; i < n; ++i) {
        if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\'' && p[i] != '\\') s += static_cast<char>(p[i]);
        else s += fmt::format("\\x{:02X}", p[i]);
    }
    return s;
}

bool is_integer(GgufType t) {
    switch (t) {
        case GgufType::U8:
        case GgufType::I8:
        case GgufType::U16:
        case GgufType::I16:
        case GgufType::U32:
        case GgufType::I32:
        case GgufType::U64:
        case GgufType::I64: return true;
        default: return false;
    }
}

bool is_signed(GgufType t) {
    return t == GgufType::I8 || t == GgufType::I16 || t == GgufType::I32 || t == GgufType::I64;
}

// Size on disk of a fixed-size scalar; 0 for string and array.
uint64_t scalar_size(GgufType t) {
    switch (t) {
        case GgufType::U8:
        case GgufType::I8:
        case GgufType::BOOL: return 1;
        case GgufType::U16:
        case GgufType::I16: return 2;
        case GgufType::U32:
        case GgufType::I32:
        case GgufType::F32: return 4;
        case GgufType::U64:
        case GgufType::I64:
        case GgufType::F64: return 8;
        default: return 0;
    }
}

std::string type_desc(const GgufValue& v) {
    if (v.type == GgufType::ARRAY) return fmt::format("array of {}", gguf_type_name(v.array_type));
    return gguf_type_name(v.type);
}

// Sequential reader over the mapping. Every read names the field being read, built
// lazily by the parser only when a check fails.
class Parser {
public:
    Parser(const std::string& file, const uint8_t* base, uint64_t size) : file_(file), base_(base), size_(size) {}

    uint64_t pos() const { return pos_; }
    uint64_t remaining() const { return size_ - pos_; }

    // What is being read, e.g. "metadata key #5 ('llama.block_count')".
    std::string field() const {
        std::string s = section_;
        for (uint64_t i : array_path_) s += fmt::format("[{}]", i);
        return s;
    }
    void set_section(std::string s) { section_ = std::move(s); }

    void need(uint64_t n, const char* what = nullptr) const {
        if (n > remaining())
            fail(ErrorCode::data_loss, "{}: truncated: {}{}{} needs {} bytes at offset {}, file has {}", file_, field(),
                 what ? " " : "", what ? what : "", n, pos_, size_);
    }

    template <typename T>
    T read(const char* what = nullptr) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, base_ + pos_, sizeof(T));
        pos_ += sizeof(T);
        return v;
    }

    std::string read_string(const char* what = nullptr) {
        const uint64_t len = read<uint64_t>(what ? what : "string length");
        if (len > remaining())
            fail(ErrorCode::data_loss, "{}: corrupt: {} has string length {} at offset {}, but only {} bytes remain",
                 file_, field(), len, pos_ - 8, remaining());
        std::string s(reinterpret_cast<const char*>(base_ + pos_), static_cast<size_t>(len));
        pos_ += len;
        return s;
    }

    GgufType read_type(const char* what) {
        const uint32_t t = read<uint32_t>(what);
        if (t > static_cast<uint32_t>(GgufType::F64))
            fail(ErrorCode::data_loss, "{}: corrupt: {} has unknown value type {} at offset {}", file_, field(), t,
                 pos_ - 4);
        return static_cast<GgufType>(t);
    }

    GgufValue read_value(GgufType type, int depth) {
        GgufValue v;
        v.type = type;
        switch (type) {
            case GgufType::U8: v.value = uint64_t{read<uint8_t>()}; break;
            case GgufType::I8: v.value = int64_t{read<int8_t>()}; break;
            case GgufType::U16: v.value = uint64_t{read<uint16_t>()}; break;
            case GgufType::I16: v.value = int64_t{read<int16_t>()}; break;
            case GgufType::U32: v.value = uint64_t{read<uint32_t>()}; break;
            case GgufType::I32: v.value = int64_t{read<int32_t>()}; break;
            case GgufType::U64: v.value = read<uint64_t>(); break;
            case GgufType::I64: v.value = read<int64_t>(); break;
            case GgufType::F32: v.value = double{read<float>()}; break;
            case GgufType::F64: v.value = read<double>(); break;
            case GgufType::BOOL: {
                const uint8_t b = read<uint8_t>();
                if (b > 1)
                    fail(ErrorCode::data_loss, "{}: corrupt: {} is a bool with byte {} at offset {}, expected 0 or 1",
                         file_, field(), b, pos_ - 1);
                v.value = b == 1;
                break;
            }
            case GgufType::STRING: v.value = read_string(); break;
            case GgufType::ARRAY: read_array(v, depth); break;
        }
        return v;
    }

private:
    void read_array(GgufValue& v, int depth) {
        if (depth >= kMaxArrayDepth)
            fail(ErrorCode::data_loss, "{}: corrupt: {} nests arrays deeper than {} levels", file_, field(),
                 kMaxArrayDepth);
        v.array_type = read_type("array element type");
        const uint64_t count = read<uint64_t>("array count");
        // The smallest encoding of one element: a string needs its length, an array its
        // type and count. A count that cannot fit in what is left is corrupt.
        const uint64_t min_elem = v.array_type == GgufType::STRING  ? 8
                                  : v.array_type == GgufType::ARRAY ? 12
                                                                    : scalar_size(v.array_type);
        if (count > remaining() / min_elem)
            fail(ErrorCode::data_loss,
                 "{}: corrupt: {} has array count {} at offset {}, but {} elements of {} need more than the {} bytes "
                 "that remain",
                 file_, field(), count, pos_ - 8, count, gguf_type_name(v.array_type), remaining());
        elements_ += count;
        if (elements_ > kMaxArrayElements)
            fail(ErrorCode::unsupported, "{}: {}: metadata arrays hold more than {} elements in total", file_, field(),
                 kMaxArrayElements);
        std::vector<GgufValue> items;
        items.reserve(static_cast<size_t>(count));
        array_path_.push_back(0);
        for (uint64_t i = 0; i < count; ++i) {
            array_path_.back() = i;
            items.push_back(read_value(v.array_type, depth + 1));
        }
        array_path_.pop_back();
        v.value = std::move(items);
    }

    const std::string& file_;
    const uint8_t* base_;
    uint64_t size_;
    uint64_t pos_ = 0;
    uint64_t elements_ = 0;
    std::string section_;
    std::vector<uint64_t> array_path_;
};

}  // namespace

const char* gguf_type_name(GgufType t) {
    switch (t) {
        case GgufType::U8: return "u8";
        case GgufType::I8: return "i8";
        case GgufType::U16: return "u16";
        case GgufType::I16: return "i16";
        case GgufType::U32: return "u32";
        case GgufType::I32: return "i32";
        case GgufType::F32: return "f32";
        case GgufType::BOOL: return "bool";
        case GgufType::STRING: return "string";
        case GgufType::ARRAY: return "array";
        case GgufType::U64: return "u64";
        case GgufType::I64: return "i64";
        case GgufType::F64: return "f64";
    }
    return "unknown";
}

uint64_t GgufTensorInfo::n_elements() const {
    uint64_t n = 1;
    for (uint64_t d : ne) n *= d;  // checked for overflow when the file was parsed
    return n;
}

uint64_t GgufTensorInfo::n_rows() const {
    uint64_t n = 1;
    for (size_t i = 1; i < ne.size(); ++i) n *= ne[i];
    return n;
}

std::shared_ptr<GgufFile> GgufFile::open(const std::string& path) {
    std::shared_ptr<GgufFile> f(new GgufFile());
    f->path_ = path;
    f->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (f->fd_ < 0) {
        const int e = errno;
        fail(e == ENOENT ? ErrorCode::not_found : ErrorCode::io, "{}: cannot open: {}", path, std::strerror(e));
    }
    struct stat st {};
    if (::fstat(f->fd_, &st) != 0) fail(ErrorCode::io, "{}: cannot stat: {}", path, std::strerror(errno));
    if (!S_ISREG(st.st_mode)) fail(ErrorCode::invalid_argument, "{}: not a regular file", path);
    f->size_ = static_cast<uint64_t>(st.st_size);
    if (f->size_ == 0) fail(ErrorCode::data_loss, "{}: not a GGUF file (the file is empty)", path);
    void* p = ::mmap(nullptr, static_cast<size_t>(f->size_), PROT_READ, MAP_PRIVATE, f->fd_, 0);
    if (p == MAP_FAILED) fail(ErrorCode::io, "{}: cannot map {} bytes: {}", path, f->size_, std::strerror(errno));
    f->base_ = static_cast<const uint8_t*>(p);
    f->parse();
    return f;
}

GgufFile::~GgufFile() {
    if (base_) ::munmap(const_cast<uint8_t*>(base_), static_cast<size_t>(size_));
    if (fd_ >= 0) ::close(fd_);
}

namespace {

// The counts the fixed header announces.
struct HeaderCounts {
    uint64_t n_tensors = 0, n_kv = 0;
};

// Magic, version (2 or 3; a byte-swapped one is a big-endian file) and the two counts.
HeaderCounts read_header(Parser& p, const std::string& file, const uint8_t* base, uint64_t size, uint32_t& version) {
    if (size >= 4 && std::memcmp(base, "GGUF", 4) != 0)
        fail(ErrorCode::data_loss, "{}: not a GGUF file (magic '{}', expected 'GGUF')", file, escape_bytes(base, 4));
    p.set_section("header");
    p.read<uint32_t>("magic");
    version = p.read<uint32_t>("version");
    if (version != 2 && version != 3) {
        // A byte-swapped small number is a big-endian file, which would need every value swapped.
        const uint32_t swapped = __builtin_bswap32(version);
        if (swapped == 2 || swapped == 3)
            fail(ErrorCode::unsupported, "{}: big-endian GGUF (version {}) is not supported", file, swapped);
        fail(ErrorCode::unsupported, "{}: GGUF version {} is not supported (expected 2 or 3)", file, version);
    }
    HeaderCounts c;
    c.n_tensors = p.read<uint64_t>("tensor count");
    c.n_kv = p.read<uint64_t>("metadata count");
    return c;
}

// The n_kv metadata entries, in file order; a key seen twice is corrupt.
void read_metadata(Parser& p, uint64_t n_kv, const std::string& file, std::vector<std::string>& key_order,
                   std::map<std::string, GgufValue>& kv) {
    // Loose bound only: a count this large cannot be real, while a merely truncated file
    // is better reported at the entry where its bytes run out.
    if (n_kv > p.remaining())
        fail(ErrorCode::data_loss, "{}: corrupt: metadata count {} cannot fit in the {} bytes after the header", file,
             n_kv, p.remaining());
    for (uint64_t i = 0; i < n_kv; ++i) {
        p.set_section(fmt::format("metadata key #{}", i));
        std::string key = p.read_string("key length");
        p.set_section(fmt::format("metadata key #{} ('{}')", i, key));
        const GgufType type = p.read_type("value type");
        GgufValue v = p.read_value(type, 0);
        if (kv.count(key)) fail(ErrorCode::data_loss, "{}: corrupt: metadata key '{}' appears twice", file, key);
        key_order.push_back(key);
        kv.emplace(std::move(key), std::move(v));
    }
}

// general.alignment when present (a nonzero multiple of 8, at most 1 GiB), else the default.
uint32_t alignment_of(const std::map<std::string, GgufValue>& kv, const std::string& file) {
    const auto it = kv.find("general.alignment");
    if (it == kv.end()) return kDefaultAlignment;
    const GgufValue& v = it->second;
    PKV_CHECK(is_integer(v.type), data_loss, "{}: metadata 'general.alignment': expected an integer, got {}", file,
              type_desc(v));
    const uint64_t a =
        is_signed(v.type) ? static_cast<uint64_t>(std::get<int64_t>(v.value)) : std::get<uint64_t>(v.value);
    PKV_CHECK(a != 0 && a % 8 == 0 && a <= (uint64_t{1} << 30), data_loss,
              "{}: metadata 'general.alignment': expected a nonzero multiple of 8, got {}", file,
              static_cast<int64_t>(a));
    return static_cast<uint32_t>(a);
}

// Tensor info #i: name, dims (each and their product within int64), type and aligned
// offset; the byte size when pkv knows the type's block layout (0 otherwise).
GgufTensorInfo read_tensor_info(Parser& p, uint64_t i, const std::string& file, uint32_t alignment) {
    p.set_section(fmt::format("tensor info #{}", i));
    GgufTensorInfo t;
    t.name = p.read_string("name length");
    p.set_section(fmt::format("tensor info #{} ('{}')", i, t.name));
    const std::string who = fmt::format("{}: tensor '{}'", file, t.name);
    const uint32_t n_dims = p.read<uint32_t>("n_dims");
    PKV_CHECK(n_dims <= kMaxDims, data_loss, "{}: expected at most {} dims, got {}", who, kMaxDims, n_dims);
    uint64_t n = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
        const uint64_t e = p.read<uint64_t>("ne");
        PKV_CHECK(e <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), data_loss,
                  "{}: ne[{}] = {} is out of range", who, d, e);
        n = checked_mul(n, e, who + " element count");
        t.ne.push_back(e);
    }
    PKV_CHECK(n <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), data_loss,
              "{}: {} elements is out of range", who, n);
    t.type_id = p.read<uint32_t>("type");
    t.offset = p.read<uint64_t>("offset");
    uint64_t block = 0, bytes = 0;
    if (ggml_type_layout(t.type_id, block, bytes)) {
        PKV_CHECK(t.row_length() % block == 0, data_loss,
                  "{}: row of {} elements is not a multiple of the {} block size {}", who, t.row_length(),
                  ggml_type_name(t.type_id), block);
        t.nbytes = checked_mul(n / block, bytes, who + " byte size");
    }
    PKV_CHECK(t.offset % alignment == 0, data_loss, "{}: data offset {} is not a multiple of the alignment {}", who,
              t.offset, alignment);
    return t;
}

// Every tensor's data lies inside the file, and no two tensors' data overlap.
void check_tensor_data(const std::vector<GgufTensorInfo>& tensors, uint64_t data_offset, uint64_t size,
                       const std::string& file) {
    for (const auto& t : tensors) {
        const uint64_t start = checked_add(data_offset, t.offset, file + ": tensor '" + t.name + "' offset");
        const uint64_t end = checked_add(start, t.nbytes, file + ": tensor '" + t.name + "' end");
        PKV_CHECK(end <= size, data_loss, "{}: tensor '{}': data [{}, {}) runs past end of file ({} bytes)", file,
                  t.name, start, end, size);
    }
    // Overlap check on tensors sorted by offset; zero-sized tensors cannot overlap anything.
    std::vector<const GgufTensorInfo*> order;
    for (const auto& t : tensors)
        if (t.nbytes > 0) order.push_back(&t);
    std::sort(order.begin(), order.end(),
              [](const GgufTensorInfo* a, const GgufTensorInfo* b) { return a->offset < b->offset; });
    for (size_t i = 1; i < order.size(); ++i) {
        const GgufTensorInfo& a = *order[i - 1];
        const GgufTensorInfo& b = *order[i];
        PKV_CHECK(a.offset + a.nbytes <= b.offset, data_loss,
                  "{}: tensor '{}': data [{}, {}) overlaps tensor '{}' at offset {}", file, a.name, a.offset,
                  a.offset + a.nbytes, b.name, b.offset);
    }
}

}  // namespace

void GgufFile::parse() {
    const std::string& file = path_;
    Parser p(file, base_, size_);
    const HeaderCounts counts = read_header(p, file, base_, size_, version_);
    read_metadata(p, counts.n_kv, file, key_order_, kv_);
    alignment_ = alignment_of(kv_, file);

    // A tensor info is at least a name length, n_dims, type and offset (24 bytes).
    if (counts.n_tensors > p.remaining() / 24)
        fail(ErrorCode::data_loss, "{}: corrupt: tensor count {} cannot fit in the {} bytes after the metadata", file,
             counts.n_tensors, p.remaining());
    tensors_.reserve(static_cast<size_t>(counts.n_tensors));
    for (uint64_t i = 0; i < counts.n_tensors; ++i) {
        GgufTensorInfo t = read_tensor_info(p, i, file, alignment_);
        if (tensor_index_.count(t.name))
            fail(ErrorCode::data_loss, "{}: corrupt: tensor name '{}' appears twice", file, t.name);
        tensor_index_.emplace(t.name, tensors_.size());
        tensors_.push_back(std::move(t));
    }

    const uint64_t end_of_infos = p.pos();
    data_offset_ = checked_add(end_of_infos, (alignment_ - end_of_infos % alignment_) % alignment_,
                               file + ": data section offset");
    check_tensor_data(tensors_, data_offset_, size_, file);
}

const GgufValue& GgufFile::get(const std::string& key) const {
    auto it = kv_.find(key);
    if (it == kv_.end()) fail(ErrorCode::not_found, "{}: metadata key '{}' is missing", path_, key);
    return it->second;
}

uint64_t GgufFile::get_u64(const std::string& key) const {
    const GgufValue& v = get(key);
    PKV_CHECK(is_integer(v.type), data_loss, "{}: metadata '{}': expected an integer, got {}", path_, key,
              type_desc(v));
    if (is_signed(v.type)) {
        const int64_t s = std::get<int64_t>(v.value);
        PKV_CHECK(s >= 0, out_of_range, "{}: metadata '{}': expected a non-negative integer, got {}", path_, key, s);
        return static_cast<uint64_t>(s);
    }
    return std::get<uint64_t>(v.value);
}

std::optional<uint64_t> GgufFile::find_u64(const std::string& key) const {
    if (!has(key)) return std::nullopt;
    return get_u64(key);
}

double GgufFile::get_f64(const std::string& key) const {
    const GgufValue& v = get(key);
    if (v.type == GgufType::F32 || v.type == GgufType::F64) return std::get<double>(v.value);
    if (is_integer(v.type))
        return is_signed(v.type) ? static_cast<double>(std::get<int64_t>(v.value))
                                 : static_cast<double>(std::get<uint64_t>(v.value));
    fail(ErrorCode::data_loss, "{}: metadata '{}': expected a number, got {}", path_, key, type_desc(v));
}

std::optional<double> GgufFile::find_f64(const std::string& key) const {
    if (!has(key)) return std::nullopt;
    return get_f64(key);
}

std::string GgufFile::get_string(const std::string& key) const {
    const GgufValue& v = get(key);
    PKV_CHECK(v.type == GgufType::STRING, data_loss, "{}: metadata '{}': expected string, got {}", path_, key,
              type_desc(v));
    return std::get<std::string>(v.value);
}

std::optional<std::string> GgufFile::find_string(const std::string& key) const {
    if (!has(key)) return std::nullopt;
    return get_string(key);
}

bool GgufFile::get_bool(const std::string& key) const {
    const GgufValue& v = get(key);
    PKV_CHECK(v.type == GgufType::BOOL, data_loss, "{}: metadata '{}': expected bool, got {}", path_, key,
              type_desc(v));
    return std::get<bool>(v.value);
}

std::optional<bool> GgufFile::find_bool(const std::string& key) const {
    if (!has(key)) return std::nullopt;
    return get_bool(key);
}

std::vector<std::string> GgufFile::get_string_array(const std::string& key) const {
    const GgufValue& v = get(key);
    PKV_CHECK(v.type == GgufType::ARRAY && v.array_type == GgufType::STRING, data_loss,
              "{}: metadata '{}': expected array of string, got {}", path_, key, type_desc(v));
    std::vector<std::string> out;
    const auto& items = std::get<std::vector<GgufValue>>(v.value);
    out.reserve(items.size());
    for (const auto& it : items) out.push_back(std::get<std::string>(it.value));
    return out;
}

std::vector<int64_t> GgufFile::get_int_array(const std::string& key) const {
    const GgufValue& v = get(key);
    PKV_CHECK(v.type == GgufType::ARRAY && is_integer(v.array_type), data_loss,
              "{}: metadata '{}': expected array of integers, got {}", path_, key, type_desc(v));
    std::vector<int64_t> out;
    const auto& items = std::get<std::vector<GgufValue>>(v.value);
    out.reserve(items.size());
    for (size_t i = 0; i < items.size(); ++i) {
        if (is_signed(v.array_type)) {
            out.push_back(std::get<int64_t>(items[i].value));
        } else {
            const uint64_t u = std::get<uint64_t>(items[i].value);
            PKV_CHECK(u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), out_of_range,
                      "{}: metadata '{}'[{}]: value {} does not fit in i64", path_, key, i, u);
            out.push_back(static_cast<int64_t>(u));
        }
    }
    return out;
}

std::string GgufFile::to_string(const GgufValue& v, size_t max_items) {
    switch (v.type) {
        case GgufType::BOOL: return std::get<bool>(v.value) ? "true" : "false";
        case GgufType::F32:
        case GgufType::F64: return fmt::format("{}", std::get<double>(v.value));
        case GgufType::STRING: {
            const auto& s = std::get<std::string>(v.value);
            constexpr size_t kMaxChars = 80;
            std::string out =
                "'" + escape_bytes(reinterpret_cast<const uint8_t*>(s.data()), std::min(s.size(), kMaxChars)) + "'";
            if (s.size() > kMaxChars) out += fmt::format("... ({} bytes)", s.size());
            return out;
        }
        case GgufType::ARRAY: {
            const auto& items = std::get<std::vector<GgufValue>>(v.value);
            std::string out = "[";
            for (size_t i = 0; i < items.size() && i < max_items; ++i) {
                if (i) out += ", ";
                out += to_string(items[i], max_items);
            }
            if (items.size() > max_items)
                out += fmt::format(", ... ({} {} items)", items.size(), gguf_type_name(v.array_type));
            return out + "]";
        }
        default:
            if (is_signed(v.type)) return fmt::format("{}", std::get<int64_t>(v.value));
            return fmt::format("{}", std::get<uint64_t>(v.value));
    }
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
    auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensorInfo& GgufFile::tensor(const std::string& name) const {
    const GgufTensorInfo* t = find_tensor(name);
    if (!t) fail(ErrorCode::not_found, "{}: tensor '{}' is missing", path_, name);
    return *t;
}

const uint8_t* GgufFile::tensor_data(const GgufTensorInfo& t) const { return base_ + data_offset_ + t.offset; }

void GgufFile::dequantize_rows(const GgufTensorInfo& t, uint64_t row0, uint64_t n_rows, float* out) const {
    PKV_CHECK(ggml_type_supported(t.type_id), unsupported, "{}: tensor '{}' has unsupported type {} (id {})", path_,
              t.name, ggml_type_name(t.type_id), t.type_id);
    const uint64_t total = t.n_rows();
    PKV_CHECK(row0 <= total && n_rows <= total - row0, out_of_range,
              "{}: tensor '{}': {} rows from row {} requested, tensor has {} rows", path_, t.name, n_rows, row0, total);
    const uint64_t len = t.row_length();
    // Rows of no elements: nothing to do, however many a forged shape declares.
    if (len == 0) return;
    const GgmlType type = t.type();
    const uint64_t row_bytes = ggml_row_size(type, static_cast<int64_t>(len));
    const uint8_t* src = tensor_data(t) + row0 * row_bytes;
    const auto n = static_cast<int64_t>(n_rows);
    // Threads only pay off past a few hundred thousand elements (an embedding lookup is one row).
    if (n > 1 && n_rows * len >= (uint64_t{1} << 18)) {
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < n; ++r)
            dequantize_row_ref(type, src + r * row_bytes, out + r * len, static_cast<int64_t>(len));
    } else {
        for (int64_t r = 0; r < n; ++r)
            dequantize_row_ref(type, src + r * row_bytes, out + r * len, static_cast<int64_t>(len));
    }
}

std::vector<float> GgufFile::dequantize(const GgufTensorInfo& t) const {
    PKV_CHECK(ggml_type_supported(t.type_id), unsupported, "{}: tensor '{}' has unsupported type {} (id {})", path_,
              t.name, ggml_type_name(t.type_id), t.type_id);
    std::vector<float> out(static_cast<size_t>(t.n_elements()));
    dequantize_rows(t, 0, t.n_rows(), out.data());
    return out;
}

}  // namespace pkv
