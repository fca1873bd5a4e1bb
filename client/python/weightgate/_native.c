/* weightgate._native: the per-chunk work of a fetch, in C and without the GIL.
 *
 *   land(dest, offset, src, crc) -> bool
 *       CRC32C of `src` compared with `crc`; when equal, `src` is copied into
 *       the writable buffer `dest` at `offset`. Returns whether they matched
 *       (nothing is copied when they did not).
 *   crc32c(data, crc=0) -> int
 *       CRC32C (Castagnoli) of `data`, continuing from `crc`.
 *
 * Debian's python3-crc32c is built without the SSE4.2 path (about 1.3 GB/s
 * here); this module uses the crc32 instruction when the CPU has it, over
 * three interleaved streams joined by shift tables (the technique of Intel's
 * iSCSI CRC paper and M. Adler's crc32c.c), else a table loop. The package
 * works without this module (it falls back to python3-crc32c).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define POLY 0x82F63B78u
#define LONG_BLOCK 8192
#define SHORT_BLOCK 256

static uint32_t table[256];
static uint32_t long_shift[4][256];
static uint32_t short_shift[4][256];
static int have_sse42;

static uint32_t gf2_times(const uint32_t* mat, uint32_t vec) {
  uint32_t sum = 0;
  for (; vec; vec >>= 1, ++mat)
    if (vec & 1) sum ^= *mat;
  return sum;
}

static void gf2_square(uint32_t* square, const uint32_t* mat) {
  for (int n = 0; n < 32; ++n) square[n] = gf2_times(mat, mat[n]);
}

/* Tables applying the operator "append `len` zero bytes" (len a power of
 * two) to a raw CRC, a byte at a time. */
static void make_shift(uint32_t shift[4][256], size_t len) {
  uint32_t odd[32], even[32];
  const uint32_t* op;
  odd[0] = POLY;
  for (int n = 1; n < 32; ++n) odd[n] = 1u << (n - 1);
  gf2_square(even, odd); /* two zero bits */
  gf2_square(odd, even); /* four zero bits */
  op = odd;
  for (size_t bytes = 1;; bytes <<= 1) {
    if (op == odd) {
      gf2_square(even, odd);
      op = even;
    } else {
      gf2_square(odd, even);
      op = odd;
    }
    if (bytes >= len) break;
  }
  for (uint32_t n = 0; n < 256; ++n)
    for (int k = 0; k < 4; ++k) shift[k][n] = gf2_times(op, n << (8 * k));
}

static uint32_t apply_shift(uint32_t shift[4][256], uint32_t crc) {
  return shift[0][crc & 0xFF] ^ shift[1][(crc >> 8) & 0xFF] ^ shift[2][(crc >> 16) & 0xFF] ^
         shift[3][crc >> 24];
}

static uint32_t crc_software(const unsigned char* p, size_t n, uint32_t crc) {
  while (n--) crc = table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint64_t blocks3(const unsigned char** pp, size_t* pn,
                                                          uint64_t c, size_t block,
                                                          uint32_t shift[4][256]) {
  const unsigned char* p = *pp;
  size_t n = *pn;
  while (n >= 3 * block) {
    uint64_t c1 = 0, c2 = 0;
    const unsigned char* end = p + block;
    do {
      uint64_t v0, v1, v2;
      memcpy(&v0, p, 8);
      memcpy(&v1, p + block, 8);
      memcpy(&v2, p + 2 * block, 8);
      c = __builtin_ia32_crc32di(c, v0);
      c1 = __builtin_ia32_crc32di(c1, v1);
      c2 = __builtin_ia32_crc32di(c2, v2);
      p += 8;
    } while (p < end);
    c = apply_shift(shift, (uint32_t)c) ^ c1;
    c = apply_shift(shift, (uint32_t)c) ^ c2;
    p += 2 * block;
    n -= 3 * block;
  }
  *pp = p;
  *pn = n;
  return c;
}

__attribute__((target("sse4.2"))) static uint32_t crc_hardware(const unsigned char* p, size_t n,
                                                               uint32_t crc) {
  uint64_t c = crc;
  c = blocks3(&p, &n, c, LONG_BLOCK, long_shift);
  c = blocks3(&p, &n, c, SHORT_BLOCK, short_shift);
  while (n >= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    c = __builtin_ia32_crc32di(c, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = (uint32_t)c;
  while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
  return c32;
}
#endif

static uint32_t crc32c(const void* data, size_t n, uint32_t crc) {
  const unsigned char* p = data;
  uint32_t c = ~crc;
#if defined(__x86_64__)
  c = have_sse42 ? crc_hardware(p, n, c) : crc_software(p, n, c);
#else
  c = crc_software(p, n, c);
#endif
  return ~c;
}

static PyObject* py_crc32c(PyObject* self, PyObject* args) {
  Py_buffer data;
  unsigned int crc = 0;
  uint32_t out;
  if (!PyArg_ParseTuple(args, "y*|I", &data, &crc)) return NULL;
  PyThreadState* state = PyEval_SaveThread();
  out = crc32c(data.buf, (size_t)data.len, crc);
  PyEval_RestoreThread(state);
  PyBuffer_Release(&data);
  return PyLong_FromUnsignedLong(out);
}

static PyObject* py_land(PyObject* self, PyObject* args) {
  Py_buffer dest, src;
  Py_ssize_t offset;
  unsigned int expected;
  int ok;
  if (!PyArg_ParseTuple(args, "w*ny*I", &dest, &offset, &src, &expected)) return NULL;
  if (offset < 0 || src.len > dest.len || offset > dest.len - src.len) {
    PyBuffer_Release(&dest);
    PyBuffer_Release(&src);
    PyErr_SetString(PyExc_ValueError, "land: the chunk lies outside the buffer");
    return NULL;
  }
  PyThreadState* state = PyEval_SaveThread();
  ok = crc32c(src.buf, (size_t)src.len, 0) == expected;
  if (ok) memcpy((char*)dest.buf + offset, src.buf, (size_t)src.len);
  PyEval_RestoreThread(state);
  PyBuffer_Release(&dest);
  PyBuffer_Release(&src);
  return PyBool_FromLong(ok);
}

static PyMethodDef methods[] = {
    {"crc32c", py_crc32c, METH_VARARGS, "CRC32C of a buffer, continuing from crc (default 0)."},
    {"land", py_land, METH_VARARGS,
     "land(dest, offset, src, crc): copy src into dest at offset if its CRC32C is crc."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT,
                                    "weightgate._native",
                                    "Chunk checks and copies without the GIL.",
                                    -1,
                                    methods,
                                    NULL,
                                    NULL,
                                    NULL,
                                    NULL};

PyMODINIT_FUNC PyInit__native(void) {
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
    table[i] = c;
  }
  make_shift(long_shift, LONG_BLOCK);
  make_shift(short_shift, SHORT_BLOCK);
#if defined(__x86_64__)
  __builtin_cpu_init();
  have_sse42 = __builtin_cpu_supports("sse4.2") != 0;
#endif
  PyObject* m = PyModule_Create(&module);
  if (m != NULL) PyModule_AddIntConstant(m, "hardware", have_sse42);
  return m;
}
