/*
 * evbin.c -- native decode + frame binning for edge_vlm.binner.FrameBinner (loaded with ctypes
 * by edge_vlm/native.py; build: gcc -O2 -shared -fPIC -o libevbin.so evbin.c, see scripts/setup.sh).
 *
 * One call per EventPacket (evbinext.c: the same code as a CPython extension function, called
 * without ctypes' overhead): decode the payload into two scratch columns (event time in ns,
 * channel-less model-grid bin c = p*H*W + y*W + x), then, in the common case (time-ordered
 * events, none older than the open frame, no jump of more than max_gap frames), add them to the
 * open frame, closing frames on the way.  Anything else (the FrameClock rules for late events /
 * jumps / unsorted packets, a malformed packet's message) is left to the Python wrapper, told by
 * the return code.  The results equal binner.py's numpy path exactly.
 *
 * Histogram of a frame: 2 time sub-bins x 2 polarities x H x W float32, flat index sub*cb + c
 * with cb = 2*H*W and sub = 1 in the second half of the frame (t - start >= ceil(P/2), i.e.
 * (t - start) * 2 // P as edge_vlm.repr.event_histogram).  The open frame counts into `acc`
 * (uint32, the same buffer for every frame, so it stays in cache) and lists the bins it touched;
 * closing it writes those bins as float32 into the caller's output buffer (the numpy path's
 * float64 counts -> float32, bit for bit), all others zero, then clears them in `acc`.
 *
 * Output buffers are reused (the caller hands them out read-only and pools them): behind its
 * 2*cb floats, a buffer holds an int32 header m and a list of up to `olcap` bins.  m >= 0: the
 * buffer's nonzero bins are (at most) the m listed ones (0: an all-zero buffer), m < 0: unknown.
 * Closing a frame into it zeroes just the listed bins (else the whole histogram: a memset of
 * 2*cb floats, which cost half of the time of a sparse stream), then records its own bins there
 * (m = -1 when more than olcap).
 *
 * Anti-flicker (fl_min > 0, FrameBinner's flicker_min_flips; stream/flicker.py is the same rule
 * in numpy): while events are added, one byte per model-grid pixel keeps its last polarity and
 * its polarity flips in the open frame; closing the frame leaves out (writes 0, and subtracts
 * from closed_count) every bin of a pixel with >= fl_min flips, then clears the pixels it
 * touched.  fl_min = 0 runs the loops of before.
 *
 * Nothing is written outside the caller's buffers whatever the payload: every coordinate is
 * checked (through the tables, whose out-of-sensor entries are negative) before it indexes
 * anything, and the scratch capacity before every write.  A malformed packet changes no state.
 * Assumes a little-endian host (native.py checks).  Counts of one bin saturate at 2^32 - 1.
 */
#include <stdint.h>
#include <string.h>

typedef __int128 i128;   /* frame boundaries (k * P may leave int64 near its ends); 64-bit gcc */

/* Return codes (>= 0: the packet is done, no frame closed; the value is its number of events). */
#define EVB_CLOSED      (-1)    /* done; one frame was closed into `out` (closed_k, closed_count) */
#define EVB_CLOSED_MORE (-2)    /* one frame closed and more events to bin: call evbin_resume   */
#define EVB_SLOW        (-3)    /* decoded into the scratch (n events; evt3 state committed) but
                                   the binning needs the FrameClock rules: the caller bins them  */
#define EVB_BAD         (-4)    /* malformed packet; nothing changed                             */
#define EVB_GROW        (-5)    /* scratch too small: `need` events; nothing changed             */
#define EVB_NO_OUT      (-6)    /* a frame must close but `out` is NULL: set it, call evbin_resume */
#define EVB_CHECK       (-7)    /* evbin_push: an empty payload, or one failing the cheap checks
                                   (length, mono time_base): the caller's general path; nothing
                                   changed and nothing counted                                   */

typedef struct {
    /* --- set by the caller */
    int64_t period;             /* frame period P (ns, > 0) */
    int64_t max_gap;            /* FrameClock.max_gap */
    int64_t cb;                 /* bins of one time sub-bin: 2 * H * W */
    int64_t width, height;      /* sensor size of the stream (evt3 bounds checks) */
    const int32_t *lut_a;       /* mono: x -> x'            evt3: y -> y'*W          (< 0: outside) */
    const int32_t *lut_b;       /* mono: y | p<<15 -> p*H*W + y'*W   evt3: x | p<<11 -> p*H*W + x' */
    int64_t *t;                 /* scratch: event times (ns) */
    int32_t *c;                 /* scratch: channel-less bins */
    int64_t cap;                /* scratch capacity (events) */
    uint32_t *acc;              /* open frame's counts (2 * cb entries, zero where not touched) */
    int32_t *touched;           /* bins of the open frame with a count (2 * cb + 1 entries) */
    float *out;                 /* output buffer of the next frame to close (2*cb floats, then
                                   the int32 header and list, see above), or NULL */
    int64_t olcap;              /* capacity of an output buffer's list (bins, >= 0) */
    int64_t n_touched;          /* entries of `touched` */
    int64_t has_cur, cur;       /* the open frame's index (FrameClock.current), if any */
    int64_t open_count;         /* its events */
    int64_t mono;               /* the stream: 1 mono, 0 evt3 (set by the caller) */
    int64_t nbytes, time_base;  /* evbin_push's packet: payload bytes, mono time_base (caller) */
    int64_t packets, events;    /* counters: packets evbin_push finished, events it decoded */
    /* --- results of the last call */
    int64_t n;                  /* events decoded */
    int64_t unsorted;           /* 1: their times decrease somewhere */
    int64_t pos;                /* next event to bin (EVB_CLOSED_MORE) */
    int64_t closed_k, closed_count;
    int64_t need;               /* EVB_GROW */
    /* --- EVT 3.0 decoder state, as codecs/evt3.py's _State */
    int64_t y, time_low, time_high, wraps, base_x, pol, seen_high, valid;
    /* --- anti-flicker (stream/flicker.py's rule; fl_min = 0: off): per model-grid pixel of the
       open frame (zero between frames), its last polarity and its polarity flips
       (saturating); closing a frame leaves out the pixels with >= fl_min flips */
    uint8_t *fl_state;          /* H*W bytes (caller, when fl_min > 0): bits 0-1 the pixel's
                                   last polarity + 1 (0: none yet), bits 2-7 its flips (<= 63) */
    int64_t fl_min;             /* flicker_min_flips (caller; 0..63) */
    int64_t fl_removed;         /* counter: events left out */
} evbin_t;

/* sizeof(evbin_t) | ABI version << 16: native.py checks it against its ctypes Structure. */
#define EVBIN_ABI 6
int64_t evbin_abi(void)
{
    return (int64_t)sizeof(evbin_t) | (int64_t)EVBIN_ABI << 16;
}

/* ------------------------------------------------------------------ histograms */

/* The model-grid pixel of a histogram bin b in [0, 2*cb) (cb = 2 * plane): no division. */
static inline int64_t bin_pixel(int64_t b, int64_t cb, int64_t plane)
{
    b -= b >= cb ? cb : 0;
    return b - (b >= plane ? plane : 0);
}

/* Close the open frame as frame k into `out` (which is then handed over: out = NULL). */
static void close_frame(evbin_t *s, int64_t k)
{
    float *out = s->out;
    uint32_t *acc = s->acc;
    const int32_t *touched = s->touched;
    const int64_t nb = 2 * s->cb, cap = s->olcap, nt = s->n_touched;
    int32_t *list = (int32_t *)(out + nb);      /* header, then the bins (see the top) */
    int64_t m = list[0], count = s->open_count;
    if (m < 0 || m > cap) {
        memset(out, 0, (size_t)nb * sizeof *out);
    } else {
        for (int64_t j = 1; j <= m; j++) {
            uint32_t b = (uint32_t)list[j];
            if (b < (uint64_t)nb)               /* (always, unless the caller wrote the list) */
                out[b] = 0.0f;
        }
    }
    if (s->fl_min > 0) {                        /* anti-flicker: see stream/flicker.py */
        const int64_t cbl = s->cb, plane = cbl / 2, min4 = s->fl_min << 2;
        uint8_t *restrict fl = s->fl_state;
        int64_t removed = 0;
        for (int64_t j = 0; j < nt; j++) {      /* (branchless: flicker bins are not rare) */
            int32_t b = touched[j];
            uint32_t a = acc[b];
            uint32_t drop = (int64_t)(fl[bin_pixel(b, cbl, plane)] & 0xFC) >= min4 ? a : 0;
            removed += drop;
            out[b] = (float)(a - drop);
            acc[b] = 0;
        }
        for (int64_t j = 0; j < nt; j++)
            fl[bin_pixel(touched[j], cbl, plane)] = 0;
        count -= removed;
        s->fl_removed += removed;
    } else {
        for (int64_t j = 0; j < nt; j++) {
            int32_t b = touched[j];
            out[b] = (float)acc[b];
            acc[b] = 0;
        }
    }
    if (nt <= cap) {
        memcpy(list + 1, touched, (size_t)nt * sizeof *list);
        list[0] = (int32_t)nt;
    } else {
        list[0] = -1;
    }
    s->closed_k = k;
    s->closed_count = count;
    s->out = NULL;
    s->open_count = 0;
    s->n_touched = 0;
}

/* Add events i0..i1 of (t, c), all inside [start, start + P) and time-ordered, to the open frame. */
static void add_events(evbin_t *s, const int64_t *t, const int32_t *c, int64_t i0, int64_t i1, i128 start)
{
    const int64_t P = s->period, cb = s->cb;
    const i128 mid = start + (P - P / 2);             /* P - P/2 = ceil(P/2) */
    uint32_t *acc = s->acc;
    int32_t *touched = s->touched;
    int64_t nt = s->n_touched;
    int64_t h = i0;                                   /* events h..i1-1: second half (t ordered) */
    if (i1 > i0 && (i128)t[i1 - 1] >= mid)
        while (h < i1 && (i128)t[h] < mid)
            h++;
    else
        h = i1;
    if (s->fl_min > 0) {              /* the same, counting polarity flips (anti-flicker) */
        const int32_t plane = (int32_t)(cb / 2);
        uint8_t *restrict fl = s->fl_state;
        for (int64_t i = i0; i < i1; i++) {
            int32_t ci = c[i];
            int64_t b = (i >= h ? cb : 0) + ci;
            uint32_t v = acc[b];
            touched[nt] = (int32_t)b;
            nt += v == 0;
            acc[b] = v + (v != UINT32_MAX);
            int32_t p = ci >= plane;
            int32_t q = ci - (p ? plane : 0);
            unsigned f = fl[q], lp = f & 3, np_ = (unsigned)p + 1;
            fl[q] = (uint8_t)((f & 0xFC) + (((lp != 0) & (lp != np_) & (f < 0xFC)) << 2) + np_);
        }
        s->n_touched = nt;
        s->open_count += i1 - i0;
        return;
    }
    for (int64_t i = i0; i < i1; i++) {
        int64_t b = (i >= h ? cb : 0) + c[i];
        uint32_t v = acc[b];
        touched[nt] = (int32_t)b;                     /* kept if the bin was empty: branchless */
        nt += v == 0;                                 /* (touched has room for every bin) */
        acc[b] = v + (v != UINT32_MAX);               /* saturates (2^32 events in one bin) */
    }
    s->n_touched = nt;
    s->open_count += i1 - i0;
}

/* Bin scratch events pos.. of a time-ordered packet starting in the open frame (s->cur),
   closing frames on the way: at most one per call (one `out`). */
static int64_t bin_from(evbin_t *s)
{
    const int64_t P = s->period, n = s->n;
    const int64_t *t = s->t;
    int closed = 0;
    int64_t i = s->pos;
    while (i < n) {
        i128 start = (i128)s->cur * P, end = start + P;
        int64_t j = i;                                 /* events i..j-1: in the open frame */
        if ((i128)t[n - 1] < end)                      /* (the common case: all the rest) */
            j = n;
        else
            while (j < n && (i128)t[j] < end)
                j++;
        add_events(s, t, s->c, i, j, start);
        i = j;
        if (i == n)
            break;
        if (closed || !s->out) {                       /* the open frame is over (may be empty) */
            s->pos = i;
            return closed ? EVB_CLOSED_MORE : EVB_NO_OUT;
        }
        close_frame(s, s->cur);
        closed = 1;
        s->cur++;
    }
    s->pos = n;
    return closed ? EVB_CLOSED : n;
}

/* After decoding: the fast path when exact, else EVB_SLOW. */
static int64_t bin_packet(evbin_t *s)
{
    const int64_t n = s->n;
    if (n == 0)
        return 0;
    if (s->unsorted || !s->has_cur)
        return EVB_SLOW;
    i128 start = (i128)s->cur * s->period;
    if ((i128)s->t[0] < start || (i128)s->t[n - 1] - start >= (i128)s->period * ((i128)s->max_gap + 1))
        return EVB_SLOW;                        /* late events or a forward jump */
    s->pos = 0;
    return bin_from(s);
}

int64_t evbin_resume(evbin_t *s)
{
    return bin_from(s);
}

/* The caller's FrameClock rules (EVB_SLOW): add events i0..i1 of the columns (t, c), all of
   frame k and time-ordered, to the open frame.  Returns 0, or EVB_BAD (nothing added) if one is
   not of frame k, its bin is out of range or its time is before the previous one's. */
int64_t evbin_add(evbin_t *s, const int64_t *t, const int32_t *c, int64_t i0, int64_t i1, int64_t k)
{
    const i128 start = (i128)k * s->period, end = start + s->period;
    for (int64_t i = i0; i < i1; i++)
        if ((i128)t[i] < start || (i128)t[i] >= end || c[i] < 0 || c[i] >= s->cb
            || (i > i0 && t[i] < t[i - 1]))
            return EVB_BAD;
    add_events(s, t, c, i0, i1, start);
    return 0;
}

/* Close the open frame as frame k into `out` (EVB_SLOW path, flush). */
int64_t evbin_close(evbin_t *s, int64_t k)
{
    if (!s->out)
        return EVB_NO_OUT;
    close_frame(s, k);
    return 0;
}

/* Drop the open frame's events (the clock restarted after a backward jump). */
void evbin_discard(evbin_t *s)
{
    for (int64_t j = 0; j < s->n_touched; j++) {
        s->acc[s->touched[j]] = 0;
        if (s->fl_min > 0) {
            int64_t q = bin_pixel(s->touched[j], s->cb, s->cb / 2);
            s->fl_state[q] = 0;
        }
    }
    s->n_touched = 0;
    s->open_count = 0;
}

/* ------------------------------------------------------------------ mono */
/*
 * mono: one little-endian uint64 per event
 *     bit 63      polarity (1 = ON)
 *     bits 48-62  y (15 bits)
 *     bits 32-47  x (16 bits)
 *     bits 0-31   time offset in ns from the packet's time_base
 * lut_a[x] = x * W // width (< 0 when x >= width); lut_b[y | p << 15] = p*H*W + (y * H // height)*W
 * (< 0 when y >= height): the top 16 bits of a word index lut_b directly.
 * The caller checked nbytes % 8 == 0 and that time_base + 2^32 - 1 fits int64.
 */
static int64_t evbin_mono(evbin_t *s, const uint8_t *data, int64_t nbytes, int64_t time_base)
{
    const int64_t n = nbytes / 8;
    if (n > s->cap) {
        s->need = n;
        return EVB_GROW;
    }
    const int32_t *lx = s->lut_a, *lyp = s->lut_b;
    int64_t *t = s->t;
    int32_t *c = s->c;
    int32_t bad = 0;
    int64_t prev = INT64_MIN;
    int unsorted = 0;
    for (int64_t i = 0; i < n; i++) {
        uint64_t w;
        memcpy(&w, data + 8 * i, 8);            /* any alignment */
        int32_t a = lx[(w >> 32) & 0xFFFF], b = lyp[w >> 48];
        bad |= a | b;                           /* negative: outside the sensor */
        int64_t ti = time_base + (int64_t)(w & 0xFFFFFFFFu);
        unsorted |= ti < prev;
        prev = ti;
        t[i] = ti;
        c[i] = a + b;
    }
    if (bad < 0)
        return EVB_BAD;
    s->n = n;
    s->unsorted = unsorted;
    return bin_packet(s);
}

/* ------------------------------------------------------------------ EVT 3.0 */
/*
 * Little-endian 16-bit words; type = bits 12-15, payload v = bits 0-11 (codecs/evt3.py):
 *   0x0 EVT_ADDR_Y     y = v & 0x7FF (bit 11: system type, ignored)
 *   0x2 EVT_ADDR_X     one event at x = v & 0x7FF, polarity v >> 11
 *   0x3 VECT_BASE_X    vector base x = v & 0x7FF, polarity v >> 11
 *   0x4 VECT_12        events at base + i for the set bits i of v (12 bits); base += 12
 *   0x5 VECT_8         the same with the low 8 bits; base += 8
 *   0x6 EVT_TIME_LOW   low 12 bits of the 24-bit microsecond time
 *   0x8 EVT_TIME_HIGH  high 12 bits; going back by more than 2048 is a 24-bit wrap (wraps++)
 *   0x7 0xA 0xE 0xF    ignored (0xA: EXT_TRIGGER; the numpy decoder reports triggers)
 *   0x1 0x9 0xB 0xC 0xD: malformed packet
 * t (ns) = ((wraps << 24) | (time_high << 12) | time_low) * 1000.  Nothing (events, triggers) is
 * emitted until the stream is valid: a TIME_LOW after a TIME_HIGH.  The vector base grows without
 * bound inside a packet (stored & 0xFFFF between packets); an event must have x < width,
 * y < height and (x & 0xFFFF) <= 2047 (what FrameBinner's columns can hold), else the packet is
 * malformed.  lut_a[y] = (y * H // height) * W, lut_b[x | p << 11] = p*H*W + x * W // width.
 * The state is committed only when the whole packet decoded.
 */
#define WRAP_THRESHOLD_HIGH 2048

static inline int64_t us_to_ns(int64_t wraps, int64_t hi, int64_t lo)
{   /* unsigned: no undefined overflow (it would take 2^39 wraps, i.e. ~290,000 years of stream) */
    return (int64_t)((((uint64_t)wraps << 24) | (uint64_t)(hi << 12) | (uint64_t)lo) * 1000u);
}

static int64_t evbin_evt3(evbin_t *s, const uint8_t *data, int64_t nbytes)
{
    const int64_t nw = nbytes / 2, cap = s->cap, width = s->width, height = s->height;
    const int32_t *ly = s->lut_a, *lxp = s->lut_b;
    int64_t *t = s->t;
    int32_t *c = s->c;
    /* (the masks keep table indices in range whatever the caller stored in the state) */
    int64_t y = s->y & 0x7FF, lo = s->time_low & 0xFFF, hi = s->time_high & 0xFFF, wraps = s->wraps;
    int64_t bx = s->base_x, pol = s->pol & 1, seen_high = s->seen_high, valid = s->valid;
    int64_t n = 0, prev = INT64_MIN;
    int64_t tns = us_to_ns(wraps, hi, lo);
    int unsorted = 0;

#define EMIT(X, P)                                                                  \
    do {                                                                            \
        int64_t x_ = (X);                                                           \
        if (x_ >= width || y >= height || (x_ & 0xFFFF) > 0x7FF)                    \
            return EVB_BAD;                                                         \
        if (n >= cap) {                                                             \
            s->need = n + 12 * (nw - i) + 12;                                       \
            return EVB_GROW;                                                        \
        }                                                                           \
        unsorted |= tns < prev;                                                     \
        prev = tns;                                                                 \
        t[n] = tns;                                                                 \
        c[n] = ly[y] + lxp[(x_ & 0x7FF) | (P) << 11];                               \
        n++;                                                                        \
    } while (0)

    for (int64_t i = 0; i < nw; i++) {
        unsigned w = (unsigned)data[2 * i] | (unsigned)data[2 * i + 1] << 8;
        unsigned v = w & 0xFFF;
        switch (w >> 12) {
        case 0x0:                                               /* EVT_ADDR_Y */
            y = v & 0x7FF;
            break;
        case 0x2:                                               /* EVT_ADDR_X */
            if (valid)
                EMIT(v & 0x7FF, v >> 11);
            break;
        case 0x3:                                               /* VECT_BASE_X */
            bx = v & 0x7FF;
            pol = v >> 11;
            break;
        case 0x4:                                               /* VECT_12 */
        case 0x5:                                               /* VECT_8 */
            if (valid) {
                unsigned bits = (w >> 12) == 0x4 ? v : (v & 0xFF);
                for (int b = 0; bits; b++, bits >>= 1)
                    if (bits & 1)
                        EMIT(bx + b, pol);
            }
            bx += (w >> 12) == 0x4 ? 12 : 8;
            break;
        case 0x6:                                               /* EVT_TIME_LOW */
            lo = v;
            if (seen_high)
                valid = 1;
            tns = us_to_ns(wraps, hi, lo);
            break;
        case 0x8:                                               /* EVT_TIME_HIGH */
            if ((int64_t)v - hi < -WRAP_THRESHOLD_HIGH)
                wraps++;
            hi = v;
            seen_high = 1;
            tns = us_to_ns(wraps, hi, lo);
            break;
        case 0x7: case 0xA: case 0xE: case 0xF:                 /* ignored here (triggers too) */
            break;
        default:                                                /* undefined word type */
            return EVB_BAD;
        }
    }
#undef EMIT
    /* commit */
    s->y = y;
    s->time_low = lo;
    s->time_high = hi;
    s->wraps = wraps;
    s->base_x = bx & 0xFFFF;
    s->pol = pol;
    s->seen_high = seen_high;
    s->valid = valid;
    s->n = n;
    s->unsorted = unsorted;
    return bin_packet(s);
}

/* ------------------------------------------------------------------ entry point */

/* One packet of the current stream (s->mono; tables and sensor size set by the caller), its
   payload `data` of s->nbytes bytes (and s->time_base, mono): decode, then bin when exact.
   (Length and time_base travel in the state: ctypes calls with fewer arguments are cheaper.) */
int64_t evbin_push(evbin_t *s, const uint8_t *data)
{
    const int64_t nbytes = s->nbytes, time_base = s->time_base;
    int64_t r;
    if (nbytes <= 0)
        return EVB_CHECK;
    if (s->mono) {
        if (nbytes % 8 || time_base > INT64_MAX - (int64_t)0xFFFFFFFF)
            return EVB_CHECK;
        r = evbin_mono(s, data, nbytes, time_base);
    } else {
        if (nbytes % 2)
            return EVB_CHECK;
        r = evbin_evt3(s, data, nbytes);
    }
    if (r == EVB_GROW)
        return r;
    s->packets++;
    if (r != EVB_BAD)
        s->events += s->n;
    return r;
}
