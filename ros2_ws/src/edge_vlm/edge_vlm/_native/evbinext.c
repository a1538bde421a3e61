/*
 * evbinext.c -- CPython extension `evbinext`: FrameBinner.push's per-packet call of the native
 * kernel (evbin.c, compiled in here: the same code as _native/libevbin.so) without ctypes.
 *
 * ctypes costs ~1 us a packet (two Structure field sets and a foreign call); one packet of a
 * sparse stream takes the kernel less than that.  This module has one builtin function per
 * FrameBinner, bound to its state (the evbin_t of native.py's EvbinState, shared with the ctypes
 * library, which keeps every other, rare, entry point):
 *
 *     push = evbinext.pusher(address, keepalive, array.array)
 *     r = push(data, time_base)       # METH_FASTCALL, no argument parsing
 *
 * sets nbytes / time_base and calls evbin_push for a payload of type bytes or array.array('B')
 * and an int time_base in int64; anything else returns EVB_CHECK at once (nothing changed: the
 * caller's general path).  Packets of 64 KiB or more run with the GIL released, as ctypes did.
 * Build (scripts/setup.sh): gcc -O2 -Wall -shared -fPIC $(python includes) -o
 * evbinext$(EXT_SUFFIX) evbinext.c; native.py imports it from this directory and checks abi().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "evbin.c"

#define GIL_FREE_BYTES (1 << 16)

static int64_t run_push(evbin_t *s, const char *data, Py_ssize_t nbytes, long long tb)
{
    int64_t r;
    s->nbytes = (int64_t)nbytes;
    s->time_base = (int64_t)tb;
    if (nbytes < GIL_FREE_BYTES)
        return evbin_push(s, (const uint8_t *)data);
    Py_BEGIN_ALLOW_THREADS
    r = evbin_push(s, (const uint8_t *)data);
    Py_END_ALLOW_THREADS
    return r;
}

/* self: the tuple (state address, keep-alive object, array.array) of pusher() */
static PyObject *push(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "push(data, time_base) takes 2 arguments");
        return NULL;
    }
    evbin_t *s = (evbin_t *)PyLong_AsVoidPtr(PyTuple_GET_ITEM(self, 0));
    PyObject *data = args[0], *tbo = args[1];
    int64_t r = EVB_CHECK;
    int overflow = 0;
    if (s == NULL || !PyLong_Check(tbo))
        return PyLong_FromLong(EVB_CHECK);
    long long tb = PyLong_AsLongLongAndOverflow(tbo, &overflow);
    if (overflow || (tb == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return PyLong_FromLong(EVB_CHECK);
    }
    if (PyBytes_CheckExact(data)) {
        r = run_push(s, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), tb);
    } else if ((PyObject *)Py_TYPE(data) == PyTuple_GET_ITEM(self, 2)) {
        Py_buffer v;
        if (PyObject_GetBuffer(data, &v, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
            PyErr_Clear();
            return PyLong_FromLong(EVB_CHECK);
        }
        if (v.itemsize == 1 && v.format != NULL && strcmp(v.format, "B") == 0)
            r = run_push(s, (const char *)v.buf, v.len, tb);
        PyBuffer_Release(&v);
    }
    return PyLong_FromLongLong((long long)r);
}

static PyMethodDef push_def = {
    "push", (PyCFunction)(void (*)(void))push, METH_FASTCALL,
    "push(data, time_base) -> evbin_push's return code (EVB_CHECK: not taken, nothing changed)",
};

static PyObject *pusher(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3 || !PyLong_Check(args[0]) || !PyType_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "pusher(state address, keepalive, array type)");
        return NULL;
    }
    if (PyLong_AsVoidPtr(args[0]) == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "pusher: null state address");
        return NULL;
    }
    PyObject *bound = PyTuple_Pack(3, args[0], args[1], args[2]);
    if (bound == NULL)
        return NULL;
    PyObject *fn = PyCFunction_NewEx(&push_def, bound, NULL);
    Py_DECREF(bound);
    return fn;
}

static PyObject *abi(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyLong_FromLongLong((long long)evbin_abi());
}

static PyMethodDef methods[] = {
    {"pusher", (PyCFunction)(void (*)(void))pusher, METH_FASTCALL,
     "pusher(state address, keepalive, array.array) -> push(data, time_base), bound to the state"},
    {"abi", abi, METH_NOARGS, "evbin_abi() of the compiled-in kernel"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "evbinext", "FrameBinner.push's native kernel call (see evbinext.c)", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit_evbinext(void)
{
    return PyModule_Create(&module_def);
}
