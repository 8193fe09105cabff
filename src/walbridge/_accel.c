/*
 * walbridge._accel: the optional compiled hot path of capture.
 *
 * Each function is the C twin of a pure-Python function named like it with a `_py` suffix:
 *   decode_row_change  walbridge.capture.pgoutput.decode_row_change_py
 *   convert_typed      walbridge.capture.rows.convert_typed_py
 * Same arguments, same result and same side effects for every input; the differential tests
 * (tests/capture/test_accel.py) hold both to it.
 *
 * Built by setup.py where a C compiler is present; walbridge.accel picks it at import unless
 * WALBRIDGE_PURE_PYTHON is set. The pure path is always there.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define ROW_INSERT 'I'
#define ROW_UPDATE 'U'
#define ROW_DELETE 'D'

/* 1 with *out set, 0 for "not this fast path" (the caller returns None), -1 with an exception set. */
static int
text_row(const unsigned char *buf, Py_ssize_t size, Py_ssize_t *pos, PyObject *names, PyObject **out)
{
    Py_ssize_t p = *pos;
    Py_ssize_t count = PyTuple_GET_SIZE(names);
    PyObject *row;
    Py_ssize_t i;

    if (p + 2 > size)
        return 0;
    if ((Py_ssize_t)((buf[p] << 8) | buf[p + 1]) != count)
        return 0;
    p += 2;
    row = PyDict_New();
    if (row == NULL)
        return -1;
    for (i = 0; i < count; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        PyObject *value;
        unsigned char kind;

        if (p >= size)
            goto not_here;
        kind = buf[p];
        if (kind == 't') {
            uint32_t length;
            Py_ssize_t start = p + 5;

            if (start > size)
                goto not_here;
            length = ((uint32_t)buf[p + 1] << 24) | ((uint32_t)buf[p + 2] << 16) |
                     ((uint32_t)buf[p + 3] << 8) | (uint32_t)buf[p + 4];
            if ((uint64_t)length > (uint64_t)(size - start))
                goto not_here;
            p = start + (Py_ssize_t)length;
            value = PyUnicode_DecodeUTF8((const char *)buf + start, (Py_ssize_t)length, NULL);
            if (value == NULL) {
                if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
                    goto fail;
                PyErr_Clear();
                goto not_here;
            }
            if (PyDict_SetItem(row, name, value) < 0) {
                Py_DECREF(value);
                goto fail;
            }
            Py_DECREF(value);
        }
        else if (kind == 'n') {
            p += 1;
            if (PyDict_SetItem(row, name, Py_None) < 0)
                goto fail;
        }
        else
            goto not_here; /* unchanged TOAST, binary values or garbage: the general decoder */
    }
    *pos = p;
    *out = row;
    return 1;

not_here:
    Py_DECREF(row);
    return 0;
fail:
    Py_DECREF(row);
    return -1;
}

static PyObject *
names_for(PyObject *columns, uint32_t oid)
{
    /* A new reference to columns[oid] (None when absent); NULL with an exception set. */
    PyObject *key = PyLong_FromUnsignedLong(oid);
    PyObject *names;

    if (key == NULL)
        return NULL;
    if (PyDict_CheckExact(columns)) {
        names = PyDict_GetItemWithError(columns, key);
        Py_DECREF(key);
        if (names == NULL)
            return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
        return Py_NewRef(names);
    }
    names = PyObject_CallMethod(columns, "get", "O", key);
    Py_DECREF(key);
    return names;
}

static PyObject *
decode_row_change(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    const unsigned char *buf;
    Py_ssize_t size, pos;
    PyObject *names = NULL, *old = NULL, *key = NULL, *new = NULL, *result = NULL;
    unsigned char kind, marker;
    uint32_t oid;
    int got;

    (void)module;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "decode_row_change() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    buf = (const unsigned char *)view.buf;
    size = view.len;

    if (size < 6)
        goto none;
    kind = buf[0];
    if (kind != ROW_INSERT && kind != ROW_UPDATE && kind != ROW_DELETE)
        goto none;
    oid = ((uint32_t)buf[1] << 24) | ((uint32_t)buf[2] << 16) | ((uint32_t)buf[3] << 8) | (uint32_t)buf[4];
    names = names_for(args[1], oid);
    if (names == NULL)
        goto fail;
    if (names == Py_None)
        goto none;
    if (!PyTuple_Check(names)) {
        PyErr_SetString(PyExc_TypeError, "decode_row_change(): column names must be a tuple");
        goto fail;
    }
    marker = buf[5];
    pos = 6;
    if (kind == ROW_INSERT) {
        if (marker != 'N')
            goto none;
        got = text_row(buf, size, &pos, names, &new);
    }
    else {
        if (marker == 'O')
            got = text_row(buf, size, &pos, names, &old);
        else if (marker == 'K')
            got = text_row(buf, size, &pos, names, &key);
        else if (kind == ROW_UPDATE && marker == 'N') {
            pos = 5;
            got = 1;
        }
        else
            goto none;
        if (got == 1 && kind == ROW_UPDATE) {
            if (pos >= size || buf[pos] != 'N')
                goto none;
            pos += 1;
            got = text_row(buf, size, &pos, names, &new);
        }
    }
    if (got < 0)
        goto fail;
    if (got == 0 || pos != size)
        goto none;
    result = Py_BuildValue("(iIOOO)", (int)kind, (unsigned int)oid, old ? old : Py_None, key ? key : Py_None,
                           new ? new : Py_None);
    goto done;

none:
    result = Py_NewRef(Py_None);
    goto done;
fail:
    result = NULL;
done:
    Py_XDECREF(old);
    Py_XDECREF(key);
    Py_XDECREF(new);
    Py_XDECREF(names);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *
convert_typed(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *row, *typed;
    Py_ssize_t i, count;

    (void)module;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "convert_typed() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    row = args[0];
    typed = args[1];
    if (!PyDict_Check(row) || !PyTuple_Check(typed)) {
        PyErr_SetString(PyExc_TypeError, "convert_typed(): a dict and a tuple of (name, converter)");
        return NULL;
    }
    count = PyTuple_GET_SIZE(typed);
    for (i = 0; i < count; i++) {
        PyObject *pair = PyTuple_GET_ITEM(typed, i);
        PyObject *name, *value, *converted;

        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "convert_typed(): a dict and a tuple of (name, converter)");
            return NULL;
        }
        name = PyTuple_GET_ITEM(pair, 0);
        value = PyDict_GetItemWithError(row, name);
        if (value == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetObject(PyExc_KeyError, name);
            goto failed;
        }
        if (value == Py_None)
            continue;
        Py_INCREF(value);
        converted = PyObject_CallOneArg(PyTuple_GET_ITEM(pair, 1), value);
        Py_DECREF(value);
        if (converted == NULL)
            goto failed;
        if (PyDict_SetItem(row, name, converted) < 0) {
            Py_DECREF(converted);
            goto failed;
        }
        Py_DECREF(converted);
        continue;
    failed:
        /* Like the pure twin's `except Exception`: anything else (KeyboardInterrupt...) goes on up. */
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return NULL;
        PyErr_Clear();
        return Py_NewRef(name);
    }
    Py_RETURN_NONE;
}

static PyMethodDef accel_methods[] = {
    {"decode_row_change", (PyCFunction)(void (*)(void))decode_row_change, METH_FASTCALL,
     "decode_row_change(buf, columns): see walbridge.capture.pgoutput.decode_row_change_py."},
    {"convert_typed", (PyCFunction)(void (*)(void))convert_typed, METH_FASTCALL,
     "convert_typed(row, typed): see walbridge.capture.rows.convert_typed_py."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef accel_module = {
    PyModuleDef_HEAD_INIT, "walbridge._accel", "walbridge's optional compiled hot path.", -1, accel_methods,
};

PyMODINIT_FUNC
PyInit__accel(void)
{
    return PyModule_Create(&accel_module);
}
