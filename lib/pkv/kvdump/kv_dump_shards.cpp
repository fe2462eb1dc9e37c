// Reading a joined dump's activations through its shards (docs/formats/kv_dump.md, "Shards").
#include <algorithm>

#include "pkv/kvdump/h5.h"
#include "pkv/kvdump/kv_dump.h"
#include "pkv/kvdump/kv_dump_internal.h"

namespace pkv::kvdump_detail {

namespace {

std::string folder_of(const std::string& path) {
    const size_t slash = path.find_last_of('/');
    if (slash == std::string::npos) return "";
    return path.substr(0, slash + 1);
}

/// pkv writes shard names relative to the joined dump's folder, below it; a forged file
/// must not make the reader open files elsewhere.
bool safe_relative(const std::string& p) {
    if (p.empty() || p[0] == '/' || p == ".") return false;
    size_t pos = 0;
    while (pos <= p.size()) {
        size_t next = p.find('/', pos);
        if (next == std::string::npos) next = p.size();
        if (p.compare(pos, next - pos, "..") == 0 && next - pos == 2) return false;
        pos = next + 1;
    }
    return true;
}

}  // namespace

std::string joined_job(const h5::File& f) {
    if (!h5::has_attr(f.id(), kAttrShards)) return "";
    const nlohmann::json j = parse_record_attr(f.id(), f.where("/"), kAttrShards);
    PKV_CHECK(j.contains("job") && j["job"].is_string() && !j["job"].get<std::string>().empty(), data_loss,
              "{}: attribute '{}': expected a non-empty string field 'job'", f.where("/"), kAttrShards);
    return j["job"].get<std::string>();
}

ActivationData::ActivationData(const h5::File& f, const std::string& name, const std::string& job, ShardFiles& files)
    : f_(&f), name_(name), dset_(h5::open_dataset(f, name)) {
    const std::vector<uint64_t> shape = h5::shape_of(f, dset_.get(), name);
    if (shape.size() == 4) D_ = shape[3];
    if (!h5::is_virtual(dset_.get())) return;
    const std::string where = f.where(name);
    PKV_CHECK(shape.size() == 4, data_loss, "{}: expected rank 4, got {}", where, shape.size());
    const uint64_t T = shape[2];
    uint64_t next = 0;
    for (const h5::VirtualMapping& m : h5::virtual_mappings(f, dset_.get(), name)) {
        const std::vector<uint64_t> want_start = {0, 0, next, 0},
                                    want_count = {shape[0], shape[1], m.count[2], shape[3]};
        PKV_CHECK(m.start == want_start && m.count == want_count && m.count[2] > 0, data_loss,
                  "{}: expected shard mappings tiling the tokens in order, [0:{}, 0:{}, {}:..., 0:{}], got start {}, "
                  "count {} from '{}'",
                  where, shape[0], shape[1], next, shape[3], shape_text(m.start), shape_text(m.count), m.file);
        PKV_CHECK(m.dataset == name, data_loss, "{}: expected dataset '{}' of shard '{}', got '{}'", where, name,
                  m.file, m.dataset);
        PKV_CHECK(safe_relative(m.file), data_loss,
                  "{}: expected a shard path relative to the dump's folder, without '..', got '{}'", where, m.file);
        Part p;
        p.t0 = next;
        p.n = m.count[2];
        p.file = m.file;
        next += p.n;
        PKV_CHECK(next <= T, data_loss, "{}: shard '{}' maps tokens past T = {}", where, m.file, T);
        const std::string path = folder_of(f.path()) + m.file;
        auto it = files.find(path);
        if (it == files.end()) {
            std::shared_ptr<h5::File> sf;
            try {
                sf = std::make_shared<h5::File>(h5::File::open_read(path));
            } catch (const Error& e) {
                if (e.code() == ErrorCode::not_found)
                    fail(ErrorCode::not_found, "{}: missing shard {} (tokens {}-{} of {})", where, path, p.t0,
                         p.t0 + p.n - 1, T);
                throw;
            }
            it = files.emplace(path, std::move(sf)).first;
        }
        p.f = it->second;
        const h5::File& sf = *p.f;
        if (!job.empty()) {
            const std::string sw = sf.where("/");
            PKV_CHECK(h5::has_attr(sf.id(), kAttrShard), data_loss,
                      "{}: missing attribute '{}' (expected a shard of job {} of {})", sw, kAttrShard, job, f.path());
            const nlohmann::json s = parse_record_attr(sf.id(), sw, kAttrShard);
            const bool same = s.value("job", nlohmann::json()) == job &&
                              s.value("token_start", nlohmann::json()) == static_cast<int64_t>(p.t0);
            PKV_CHECK(same, data_loss,
                      "{}: attribute '{}': expected job {} at token {} (as {} maps it), got job {} at token {}", sw,
                      kAttrShard, job, p.t0, f.path(), s.value("job", nlohmann::json()).dump(),
                      s.value("token_start", nlohmann::json()).dump());
        }
        p.dset = h5::open_dataset(sf, name);
        const std::string swhere = sf.where(name);
        PKV_CHECK(!h5::is_virtual(p.dset.get()), data_loss, "{}: expected stored data, got a virtual dataset", swhere);
        const auto sshape = h5::shape_of(sf, p.dset.get(), name);
        PKV_CHECK(sshape == m.count, data_loss, "{}: expected shape {} (as {} maps it), got {}", swhere,
                  shape_text(m.count), where, shape_text(sshape));
        h5::Id type = h5::type_of(sf, p.dset.get(), name);
        PKV_CHECK(h5::is_f16_type(type.get()), data_loss, "{}: expected dtype float16, got {}", swhere,
                  h5::type_name(type.get()));
        parts_.push_back(std::move(p));
    }
    PKV_CHECK(next == T, data_loss, "{}: expected shards covering T = {} tokens, got {}", where, T, next);
}

void ActivationData::check_stored() const {
    if (parts_.empty()) return h5::check_stored(*f_, dset_.get(), name_);
    for (const Part& p : parts_) h5::check_stored(*p.f, p.dset.get(), name_);
}

void ActivationData::read(uint64_t layer, uint64_t head, uint64_t t0, uint64_t n, hid_t f16, uint16_t* out) const {
    if (n == 0) return;
    const uint64_t D = D_;
    if (parts_.empty()) return h5::read_block(*f_, dset_.get(), name_, f16, {layer, head, t0, 0}, {1, 1, n, D}, out);
    // The first shard holding t0: shards are in token order.
    auto it = std::upper_bound(parts_.begin(), parts_.end(), t0, [](uint64_t t, const Part& p) { return t < p.t0; });
    PKV_ASSERT(it != parts_.begin());
    --it;
    for (uint64_t t = t0, end = t0 + n; t < end; ++it) {
        PKV_ASSERT(it != parts_.end());
        const uint64_t a = t - it->t0, m = std::min(end, it->t0 + it->n) - t;
        h5::read_block(*it->f, it->dset.get(), name_, f16, {layer, head, a, 0}, {1, 1, m, D}, out + (t - t0) * D);
        t += m;
    }
}

std::vector<uint64_t> ActivationData::chunks() const {
    return h5::chunks_of(parts_.empty() ? dset_.get() : parts_.front().dset.get());
}

std::vector<std::string> ActivationData::filters() const {
    return h5::filters_of(parts_.empty() ? dset_.get() : parts_.front().dset.get());
}

uint64_t ActivationData::storage_bytes() const {
    if (parts_.empty()) return h5::storage_bytes(dset_.get());
    uint64_t s = 0;
    for (const Part& p : parts_) s += h5::storage_bytes(p.dset.get());
    return s;
}

std::vector<std::string> ActivationData::shard_files() const {
    std::vector<std::string> out;
    for (const Part& p : parts_) out.push_back(p.file);
    return out;
}

}  // namespace pkv::kvdump_detail
