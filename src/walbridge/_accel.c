/*
 * walbridge._accel: the optional compiled hot path of capture.
 *
 * Each function is the C twin of a pure-Python function named like it with a `_py` suffix:
 *   decode_row_change  walbridge.capture.pgoutput.decode_row_change_py
 *   convert_typed      walbridge.capture.rows.convert_typed_py
 *   splice_envelope    walbridge.events.splice_envelope_py
 *   utc_timestamp_fast_path  walbridge.capture.values.utc_timestamp_fast_path_py
 *   encode_text_rows   walbridge.capture.rows.encode_text_rows_py
 *   encode_change_rows walbridge.capture.log_rows.encode_change_rows_py
 * Same arguments, same result and same side effects for every input; the differential tests
 * (tests/capture/test_accel.py) hold both to it.
 *
 * Built by setup.py where a C compiler is present; walbridge.accel picks it at import unless
 * WALBRIDGE_PURE_PYTHON is set. The pure path is always there.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
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

/* ---------------------------------------------------------------- splice_envelope */

static PyObject *orjson_dumps; /* orjson.dumps, looked up once at import */

/* A growing byte buffer: the envelope's pieces are appended, then copied once into a bytes object. It starts
 * in its own inline storage (an envelope of a usual row fits: no allocation), and moves to the heap beyond.
 * Never copy one by value: BUFFER_INIT it where it lives and buffer_release it (buffer_finish does). */
#define BUFFER_INLINE 1024
typedef struct {
    char *data;
    Py_ssize_t size, capacity;
    char inline_data[BUFFER_INLINE];
} Buffer;

#define BUFFER_INIT(b) ((b)->data = (b)->inline_data, (b)->size = 0, (b)->capacity = BUFFER_INLINE)

static void
buffer_release(Buffer *b)
{
    if (b->data != b->inline_data)
        PyMem_Free(b->data);
    BUFFER_INIT(b);
}

static int
buffer_add(Buffer *b, const char *data, Py_ssize_t n)
{
    if (b->size + n > b->capacity) {
        Py_ssize_t capacity = (b->size + n) * 2 + 256;
        char *grown;

        if (b->data == b->inline_data) {
            grown = PyMem_Malloc((size_t)capacity);
            if (grown != NULL)
                memcpy(grown, b->data, (size_t)b->size);
        }
        else
            grown = PyMem_Realloc(b->data, (size_t)capacity);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        b->data = grown;
        b->capacity = capacity;
    }
    memcpy(b->data + b->size, data, (size_t)n);
    b->size += n;
    return 0;
}

/* The decimal digits of value (snprintf's "%lld", without its cost). */
static int
buffer_add_long(Buffer *b, long long value)
{
    char digits[24];
    char *end = digits + sizeof(digits), *p = end;
    unsigned long long magnitude = value < 0 ? 0ULL - (unsigned long long)value : (unsigned long long)value;

    do {
        *--p = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude != 0);
    if (value < 0)
        *--p = '-';
    return buffer_add(b, p, end - p);
}

#define BUFFER_LITERAL(b, text) buffer_add((b), (text), (Py_ssize_t)(sizeof(text) - 1))

static int
buffer_add_bytes(Buffer *b, PyObject *bytes)
{
    /* Like bytes' %b: anything with the buffer protocol. */
    Py_buffer view;
    int rc;

    if (PyBytes_CheckExact(bytes))
        return buffer_add(b, PyBytes_AS_STRING(bytes), PyBytes_GET_SIZE(bytes));
    if (PyObject_GetBuffer(bytes, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Format(PyExc_TypeError, "%%b requires a bytes-like object, not '%.100s'", Py_TYPE(bytes)->tp_name);
        return -1;
    }
    rc = buffer_add(b, (const char *)view.buf, view.len);
    PyBuffer_Release(&view);
    return rc;
}

static int
buffer_add_json(Buffer *b, PyObject *value)
{
    PyObject *json = PyObject_CallOneArg(orjson_dumps, value);
    int rc;

    if (json == NULL)
        return -1;
    rc = buffer_add_bytes(b, json);
    Py_DECREF(json);
    return rc;
}

/* Like bytes' %d of number * factor (an int; anything else goes through Python's own arithmetic). */
static int
buffer_add_scaled(Buffer *b, PyObject *number, long long factor)
{
    int overflow = 0, n;
    long long value, scaled;
    PyObject *product, *text;
    const char *utf8;
    Py_ssize_t length;

    if (PyLong_CheckExact(number)) {
        value = PyLong_AsLongLongAndOverflow(number, &overflow);
        if (!overflow && !(value == -1 && PyErr_Occurred()) && !__builtin_mul_overflow(value, factor, &scaled))
            return buffer_add_long(b, scaled);
        PyErr_Clear();
    }
    if (!PyLong_Check(number)) {
        PyErr_Format(PyExc_TypeError, "%%d format: an integer is required, not %.100s", Py_TYPE(number)->tp_name);
        return -1;
    }
    if (factor == 1)
        product = Py_NewRef(number);
    else {
        PyObject *by = PyLong_FromLongLong(factor);
        if (by == NULL)
            return -1;
        product = PyNumber_Multiply(number, by);
        Py_DECREF(by);
        if (product == NULL)
            return -1;
    }
    text = PyNumber_ToBase(product, 10);
    Py_DECREF(product);
    if (text == NULL)
        return -1;
    utf8 = PyUnicode_AsUTF8AndSize(text, &length);
    n = utf8 == NULL ? -1 : buffer_add(b, utf8, length);
    Py_DECREF(text);
    return n < 0 ? -1 : 0;
}

static PyObject *
buffer_finish(Buffer *b)
{
    PyObject *out = PyBytes_FromStringAndSize(b->data, b->size);
    buffer_release(b);
    return out;
}

static PyObject *
with_schema(PyObject *schema, PyObject *payload)
{
    /* b'{"schema":%b,"payload":%b}' % (schema, payload) */
    Buffer b;

    BUFFER_INIT(&b);
    if (BUFFER_LITERAL(&b, "{\"schema\":") < 0 || buffer_add_bytes(&b, schema) < 0 ||
        BUFFER_LITERAL(&b, ",\"payload\":") < 0 || buffer_add_bytes(&b, payload) < 0 ||
        BUFFER_LITERAL(&b, "}") < 0) {
        buffer_release(&b);
        return NULL;
    }
    return buffer_finish(&b);
}

static PyObject *
splice_envelope(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *parts, *lsn, *op, *key, *before, *after, *ts_ms, *value_schema, *key_schema;
    PyObject *value = NULL, *key_bytes = NULL, *wrapped, *result;
    PyObject *sequence;
    Buffer b, lsn_digits;
    Py_ssize_t i, count, op_length;
    const char *op_text;

    (void)module;
    BUFFER_INIT(&b);
    BUFFER_INIT(&lsn_digits);
    if (nargs != 9) {
        PyErr_Format(PyExc_TypeError, "splice_envelope() takes 9 arguments (%zd given)", nargs);
        return NULL;
    }
    parts = args[0], lsn = args[1], op = args[2], key = args[3], before = args[4], after = args[5];
    ts_ms = args[6], value_schema = args[7], key_schema = args[8];

    if (BUFFER_LITERAL(&b, "{\"before\":") < 0 || buffer_add_json(&b, before) < 0 ||
        BUFFER_LITERAL(&b, ",\"after\":") < 0 || buffer_add_json(&b, after) < 0 ||
        BUFFER_LITERAL(&b, ",\"source\":") < 0)
        goto fail;
    /* the source block: parts joined by the LSN's digits */
    if (buffer_add_scaled(&lsn_digits, lsn, 1) < 0)
        goto fail;
    sequence = PySequence_Fast(parts, "splice_envelope(): parts must be a sequence of bytes");
    if (sequence == NULL)
        goto fail;
    count = PySequence_Fast_GET_SIZE(sequence);
    for (i = 0; i < count; i++) {
        if ((i > 0 && buffer_add(&b, lsn_digits.data, lsn_digits.size) < 0) ||
            buffer_add_bytes(&b, PySequence_Fast_GET_ITEM(sequence, i)) < 0) {
            Py_DECREF(sequence);
            goto fail;
        }
    }
    Py_DECREF(sequence);
    buffer_release(&lsn_digits);
    if (!PyUnicode_Check(op)) {
        PyErr_SetString(PyExc_TypeError, "splice_envelope(): op must be a str");
        goto fail;
    }
    op_text = PyUnicode_AsUTF8AndSize(op, &op_length);
    if (op_text == NULL)
        goto fail;
    if (BUFFER_LITERAL(&b, ",\"transaction\":null,\"op\":\"") < 0 || buffer_add(&b, op_text, op_length) < 0 ||
        BUFFER_LITERAL(&b, "\",\"ts_ms\":") < 0 || buffer_add_scaled(&b, ts_ms, 1) < 0 ||
        BUFFER_LITERAL(&b, ",\"ts_us\":") < 0 || buffer_add_scaled(&b, ts_ms, 1000) < 0 ||
        BUFFER_LITERAL(&b, ",\"ts_ns\":") < 0 || buffer_add_scaled(&b, ts_ms, 1000000) < 0 ||
        BUFFER_LITERAL(&b, "}") < 0)
        goto fail;
    value = buffer_finish(&b);
    if (value == NULL)
        return NULL;
    if (key != Py_None) {
        key_bytes = PyObject_CallOneArg(orjson_dumps, key);
        if (key_bytes == NULL)
            goto fail_value;
    }
    if (value_schema != Py_None) {
        wrapped = with_schema(value_schema, value);
        if (wrapped == NULL)
            goto fail_value;
        Py_SETREF(value, wrapped);
        if (key_bytes != NULL) {
            wrapped = with_schema(key_schema, key_bytes);
            if (wrapped == NULL)
                goto fail_value;
            Py_SETREF(key_bytes, wrapped);
        }
    }
    result = PyTuple_Pack(2, key_bytes != NULL ? key_bytes : Py_None, value);
    Py_XDECREF(key_bytes);
    Py_DECREF(value);
    return result;

fail:
    buffer_release(&b);
    buffer_release(&lsn_digits);
    return NULL;
fail_value:
    Py_XDECREF(key_bytes);
    Py_DECREF(value);
    return NULL;
}

/* ---------------------------------------------------------------- encode_text_rows */

static PyObject *zero;   /* 0: the LSN of a snapshot row's source block */
static PyObject *op_read; /* "r" */

/* The events of one row of text values, ((op, key, value),); None when the general path must take it (its width is
 * not the table's, a value did not convert, or the envelope could not be spliced); NULL on anything that is
 * not an Exception (KeyboardInterrupt...), as the pure twin lets those through. */
static PyObject *
encode_text_row(PyObject *module, PyObject *values, PyObject *const *args)
{
    PyObject *names = args[1], *typed = args[2], *key_names = args[3];
    PyObject *sequence, *row, *key = NULL, *failed, *record = NULL;
    Py_ssize_t i, width = PyTuple_GET_SIZE(names);

    sequence = PySequence_Fast(values, "encode_text_rows(): each row must be a sequence");
    if (sequence == NULL)
        goto failure;
    if (PySequence_Fast_GET_SIZE(sequence) != width) {
        Py_DECREF(sequence);
        Py_RETURN_NONE;
    }
    row = PyDict_New();
    if (row == NULL) {
        Py_DECREF(sequence);
        return NULL;
    }
    for (i = 0; i < width; i++) {
        if (PyDict_SetItem(row, PyTuple_GET_ITEM(names, i), PySequence_Fast_GET_ITEM(sequence, i)) < 0) {
            Py_DECREF(sequence);
            goto done;
        }
    }
    Py_DECREF(sequence);
    {
        PyObject *convert_args[2] = {row, typed};
        failed = convert_typed(module, convert_args, 2);
    }
    if (failed == NULL)
        goto done;
    if (failed != Py_None) {
        Py_DECREF(failed);
        record = Py_NewRef(Py_None);
        goto done;
    }
    Py_DECREF(failed);
    if (PyTuple_GET_SIZE(key_names) == 0)
        key = Py_NewRef(Py_None);
    else {
        key = PyDict_New();
        if (key == NULL)
            goto done;
        for (i = 0; i < PyTuple_GET_SIZE(key_names); i++) {
            PyObject *name = PyTuple_GET_ITEM(key_names, i);
            PyObject *value = PyDict_GetItemWithError(row, name);

            if (value == NULL && PyErr_Occurred())
                goto done;
            if (PyDict_SetItem(key, name, value != NULL ? value : Py_None) < 0)
                goto done;
        }
    }
    {
        PyObject *splice_args[9] = {args[4], zero, op_read, key, Py_None, row, args[5], args[6], args[7]};
        PyObject *spliced = splice_envelope(module, splice_args, 9), *event;

        if (spliced == NULL)
            goto done;
        event = PyTuple_Pack(3, op_read, PyTuple_GET_ITEM(spliced, 0), PyTuple_GET_ITEM(spliced, 1));
        Py_DECREF(spliced);
        if (event == NULL)
            goto done;
        record = PyTuple_Pack(1, event);
        Py_DECREF(event);
    }
done:
    Py_XDECREF(key);
    Py_DECREF(row);
    if (record != NULL)
        return record;
failure:
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return NULL;
    PyErr_Clear();
    Py_RETURN_NONE;
}

static PyObject *
encode_text_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *rows, *out;
    Py_ssize_t i, count;

    if (nargs != 8) {
        PyErr_Format(PyExc_TypeError, "encode_text_rows() takes 8 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyTuple_Check(args[1]) || !PyTuple_Check(args[2]) || !PyTuple_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "encode_text_rows(): names, typed and key names must be tuples");
        return NULL;
    }
    rows = PySequence_Fast(args[0], "encode_text_rows(): rows must be a sequence");
    if (rows == NULL)
        return NULL;
    count = PySequence_Fast_GET_SIZE(rows);
    out = PyList_New(count);
    if (out == NULL) {
        Py_DECREF(rows);
        return NULL;
    }
    for (i = 0; i < count; i++) {
        PyObject *record = encode_text_row(module, PySequence_Fast_GET_ITEM(rows, i), args);

        if (record == NULL) {
            Py_DECREF(rows);
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, record);
    }
    Py_DECREF(rows);
    return out;
}

/* ---------------------------------------------------------------- encode_change_rows */

static PyObject *op_create, *op_update, *op_delete; /* "c", "u", "d" */

/* The image converted into a new dict in column order: 1 with *out set (NULL for a missing image), 0 when it
 * does not fit (not a dict, other columns, a value that does not convert), -1 with an exception set. */
static int
log_image(PyObject *module, PyObject *image, PyObject *const *args, PyObject **out)
{
    PyObject *names = args[1], *row, *failed;
    Py_ssize_t i, width = PyTuple_GET_SIZE(names);

    *out = NULL;
    if (image == Py_None)
        return 1;
    if (!PyDict_Check(image) || PyDict_GET_SIZE(image) != width)
        return 0;
    row = PyDict_New();
    if (row == NULL)
        return -1;
    for (i = 0; i < width; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        PyObject *value = PyDict_GetItemWithError(image, name);

        if (value == NULL) {
            Py_DECREF(row);
            return PyErr_Occurred() ? -1 : 0;
        }
        if (PyDict_SetItem(row, name, value) < 0) {
            Py_DECREF(row);
            return -1;
        }
    }
    {
        PyObject *convert_args[2] = {row, args[2]};
        failed = convert_typed(module, convert_args, 2);
    }
    if (failed == NULL) {
        Py_DECREF(row);
        return -1;
    }
    if (failed != Py_None) {
        Py_DECREF(failed);
        Py_DECREF(row);
        return 0;
    }
    Py_DECREF(failed);
    *out = row;
    return 1;
}

/* The key dict of a converted image (None for a table without a key); NULL with an exception set. */
static PyObject *
log_key(PyObject *row, PyObject *key_names)
{
    PyObject *key;
    Py_ssize_t i;

    if (PyTuple_GET_SIZE(key_names) == 0)
        return Py_NewRef(Py_None);
    key = PyDict_New();
    if (key == NULL)
        return NULL;
    for (i = 0; i < PyTuple_GET_SIZE(key_names); i++) {
        PyObject *name = PyTuple_GET_ITEM(key_names, i);
        PyObject *value = PyDict_GetItemWithError(row, name);

        if ((value == NULL && PyErr_Occurred()) || PyDict_SetItem(key, name, value != NULL ? value : Py_None) < 0) {
            Py_DECREF(key);
            return NULL;
        }
    }
    return key;
}

/* ts_ms = changed_us // 1000 (floored, as Python's //) as digits. */
static int
buffer_add_floor_ms(Buffer *b, PyObject *changed_us)
{
    int overflow = 0;
    long long us, ms;
    PyObject *thousand, *quotient;
    int rc;

    if (PyLong_CheckExact(changed_us)) {
        us = PyLong_AsLongLongAndOverflow(changed_us, &overflow);
        if (!overflow && !(us == -1 && PyErr_Occurred())) {
            ms = us / 1000;
            if (us % 1000 < 0)
                ms -= 1;
            return buffer_add_long(b, ms);
        }
        PyErr_Clear();
    }
    thousand = PyLong_FromLong(1000);
    if (thousand == NULL)
        return -1;
    quotient = PyNumber_FloorDivide(changed_us, thousand);
    Py_DECREF(thousand);
    if (quotient == NULL)
        return -1;
    rc = buffer_add_scaled(b, quotient, 1);
    Py_DECREF(quotient);
    return rc;
}

/* The source block of one change-log row: pieces joined by ts_ms, ts_us, ts_ns, txId and change_id. */
static PyObject *
log_source(PyObject *pieces, PyObject *row)
{
    PyObject *changed_us = PyTuple_GET_ITEM(row, 7);
    Buffer b;

    BUFFER_INIT(&b);
    if (buffer_add_bytes(&b, PyTuple_GET_ITEM(pieces, 0)) < 0 || buffer_add_floor_ms(&b, changed_us) < 0 ||
        buffer_add_bytes(&b, PyTuple_GET_ITEM(pieces, 1)) < 0 || buffer_add_scaled(&b, changed_us, 1) < 0 ||
        buffer_add_bytes(&b, PyTuple_GET_ITEM(pieces, 2)) < 0 || buffer_add_scaled(&b, changed_us, 1000) < 0 ||
        buffer_add_bytes(&b, PyTuple_GET_ITEM(pieces, 3)) < 0 ||
        buffer_add_scaled(&b, PyTuple_GET_ITEM(row, 1), 1) < 0 ||
        buffer_add_bytes(&b, PyTuple_GET_ITEM(pieces, 4)) < 0 ||
        buffer_add_scaled(&b, PyTuple_GET_ITEM(row, 0), 1) < 0 ||
        buffer_add_bytes(&b, PyTuple_GET_ITEM(pieces, 5)) < 0) {
        buffer_release(&b);
        return NULL;
    }
    return buffer_finish(&b);
}

/* One event's (op, key bytes, value). */
static PyObject *
log_event(PyObject *module, PyObject *const *args, PyObject *source_parts, PyObject *op, PyObject *key,
          PyObject *before, PyObject *after)
{
    PyObject *splice_args[9] = {source_parts, zero, op, key, before, after, args[5], args[6], args[7]};
    PyObject *record = splice_envelope(module, splice_args, 9), *event;

    if (record == NULL)
        return NULL;
    event = PyTuple_Pack(3, op, PyTuple_GET_ITEM(record, 0), PyTuple_GET_ITEM(record, 1));
    Py_DECREF(record);
    return event;
}

/* A row's events as a tuple of (op, key, value), None when the general path must take it; NULL for what
 * is not an Exception. */
static PyObject *
encode_change_row(PyObject *module, PyObject *row, PyObject *const *args)
{
    PyObject *before = NULL, *after = NULL, *old_key = NULL, *new_key = NULL, *source = NULL;
    PyObject *parts = NULL, *first = NULL, *second = NULL, *result = NULL;
    PyObject *op;
    Py_UCS4 kind;
    int fits;

    if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != 8)
        Py_RETURN_NONE;
    op = PyTuple_GET_ITEM(row, 4);
    if (!PyUnicode_Check(op) || PyUnicode_GET_LENGTH(op) != 1)
        Py_RETURN_NONE;
    kind = PyUnicode_READ_CHAR(op, 0);
    fits = log_image(module, PyTuple_GET_ITEM(row, 5), args, &before);
    if (fits == 1)
        fits = log_image(module, PyTuple_GET_ITEM(row, 6), args, &after);
    if (fits < 0)
        goto done;
    if (fits == 0 || !((kind == 'c' && after != NULL) || (kind == 'd' && before != NULL) ||
                       (kind == 'u' && before != NULL && after != NULL))) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    source = log_source(args[4], row);
    if (source == NULL)
        goto done;
    parts = PyTuple_Pack(1, source);
    if (parts == NULL)
        goto done;
    if (kind == 'c') {
        if ((new_key = log_key(after, args[3])) == NULL ||
            (first = log_event(module, args, parts, op_create, new_key, Py_None, after)) == NULL)
            goto done;
        result = PyTuple_Pack(1, first);
    }
    else if (kind == 'd') {
        if ((old_key = log_key(before, args[3])) == NULL ||
            (first = log_event(module, args, parts, op_delete, old_key, before, Py_None)) == NULL)
            goto done;
        result = PyTuple_Pack(1, first);
    }
    else {
        int same;

        if ((old_key = log_key(before, args[3])) == NULL || (new_key = log_key(after, args[3])) == NULL)
            goto done;
        same = PyObject_RichCompareBool(old_key, new_key, Py_EQ);
        if (same < 0)
            goto done;
        if (same) {
            if ((first = log_event(module, args, parts, op_update, new_key, before, after)) == NULL)
                goto done;
            result = PyTuple_Pack(1, first);
        }
        else {
            /* The primary key changed: as Debezium, a delete under the old key, then a create. */
            if ((first = log_event(module, args, parts, op_delete, old_key, before, Py_None)) == NULL ||
                (second = log_event(module, args, parts, op_create, new_key, Py_None, after)) == NULL)
                goto done;
            result = PyTuple_Pack(2, first, second);
        }
    }
done:
    Py_XDECREF(before);
    Py_XDECREF(after);
    Py_XDECREF(old_key);
    Py_XDECREF(new_key);
    Py_XDECREF(source);
    Py_XDECREF(parts);
    Py_XDECREF(first);
    Py_XDECREF(second);
    if (result != NULL)
        return result;
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return NULL;
    PyErr_Clear();
    Py_RETURN_NONE;
}

static PyObject *
encode_change_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *rows, *out;
    Py_ssize_t i, count;

    if (nargs != 8) {
        PyErr_Format(PyExc_TypeError, "encode_change_rows() takes 8 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyTuple_Check(args[1]) || !PyTuple_Check(args[2]) || !PyTuple_Check(args[3]) || !PyTuple_Check(args[4]) ||
        PyTuple_GET_SIZE(args[4]) != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "encode_change_rows(): names, typed and key names must be tuples, and six source pieces");
        return NULL;
    }
    rows = PySequence_Fast(args[0], "encode_change_rows(): rows must be a sequence");
    if (rows == NULL)
        return NULL;
    count = PySequence_Fast_GET_SIZE(rows);
    out = PyList_New(count);
    if (out == NULL) {
        Py_DECREF(rows);
        return NULL;
    }
    for (i = 0; i < count; i++) {
        PyObject *events = encode_change_row(module, PySequence_Fast_GET_ITEM(rows, i), args);

        if (events == NULL) {
            Py_DECREF(rows);
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, events);
    }
    Py_DECREF(rows);
    return out;
}

/* ---------------------------------------------------------------- utc_timestamp_fast_path */

/* A timestamptz converter (io.debezium.time.ZonedTimestamp): the UTC texts the server prints in a UTC
 * session ('YYYY-MM-DD HH:MM:SS[.f...]+00', ASCII) converted here, every other text by `fallback`, the
 * pure-Python converter whose first two branches this repeats. */
typedef struct {
    PyObject_HEAD
    int fraction_digits;
    PyObject *fallback;
    vectorcallfunc vectorcall;
} UtcTimestamp;

static PyObject *
utc_timestamp_convert(UtcTimestamp *self, PyObject *text)
{
    const char *in;
    char out[64];
    Py_ssize_t length, n, i, fraction_start, fraction_end, fraction_length;
    int digits = self->fraction_digits;

    if (!PyUnicode_CheckExact(text) || !PyUnicode_IS_ASCII(text))
        goto slow;
    in = (const char *)PyUnicode_DATA(text);
    length = PyUnicode_GET_LENGTH(text);
    if (length < 22 || length > 48 || in[length - 3] != '+' || in[length - 2] != '0' || in[length - 1] != '0' ||
        in[10] != ' ' || in[4] != '-')
        goto slow;
    if (digits > 0 && digits <= 9 && length == 23 + digits && in[19] == '.') {
        /* exactly the wanted fraction digits: f"{text[:10]}T{text[11:-3]}Z" */
        memcpy(out, in, 10);
        out[10] = 'T';
        memcpy(out + 11, in + 11, (size_t)(length - 14));
        out[length - 3] = 'Z';
        return PyUnicode_FromStringAndSize(out, length - 2);
    }
    /* head = text[:10] + "T" + text[11:19]; fraction = text[20:-3] if text[19] == "." else "" */
    memcpy(out, in, 10);
    out[10] = 'T';
    memcpy(out + 11, in + 11, 8);
    n = 19;
    fraction_start = 20;
    fraction_end = in[19] == '.' ? length - 3 : fraction_start;
    fraction_length = fraction_end > fraction_start ? fraction_end - fraction_start : 0;
    if (digits <= 0 || digits > 9) {
        /* (f".{fraction}".rstrip("0").rstrip(".") if fraction else "") */
        if (fraction_length > 0) {
            Py_ssize_t start = n;
            out[n++] = '.';
            memcpy(out + n, in + fraction_start, (size_t)fraction_length);
            n += fraction_length;
            while (n > start && out[n - 1] == '0')
                n--;
            while (n > start && out[n - 1] == '.')
                n--;
        }
    }
    else {
        /* f"{head}.{fraction.ljust(digits, '0')[:digits]}Z" */
        out[n++] = '.';
        for (i = 0; i < digits; i++)
            out[n++] = i < fraction_length ? in[fraction_start + i] : '0';
    }
    out[n++] = 'Z';
    return PyUnicode_FromStringAndSize(out, n);

slow:
    return PyObject_CallOneArg(self->fallback, text);
}

static PyObject *
utc_timestamp_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0)) {
        PyErr_SetString(PyExc_TypeError, "a timestamptz converter takes one argument, the text");
        return NULL;
    }
    return utc_timestamp_convert((UtcTimestamp *)callable, args[0]);
}

static int
utc_timestamp_traverse(UtcTimestamp *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fallback);
    return 0;
}

static int
utc_timestamp_clear(UtcTimestamp *self)
{
    Py_CLEAR(self->fallback);
    return 0;
}

static void
utc_timestamp_dealloc(UtcTimestamp *self)
{
    PyObject_GC_UnTrack(self);
    utc_timestamp_clear(self);
    PyObject_GC_Del(self);
}

static PyTypeObject UtcTimestampType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "walbridge._accel.UtcTimestamp",
    .tp_basicsize = sizeof(UtcTimestamp),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "A timestamptz converter with its UTC fast path compiled (see utc_timestamp_fast_path).",
    .tp_traverse = (traverseproc)utc_timestamp_traverse,
    .tp_clear = (inquiry)utc_timestamp_clear,
    .tp_dealloc = (destructor)utc_timestamp_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(UtcTimestamp, vectorcall),
};

static PyObject *
utc_timestamp_fast_path(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    UtcTimestamp *converter;
    long digits;

    (void)module;
    if (nargs != 2 || !PyLong_Check(args[0]) || !PyCallable_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "utc_timestamp_fast_path(fraction_digits: int, fallback: callable)");
        return NULL;
    }
    digits = PyLong_AsLong(args[0]);
    if (digits == -1 && PyErr_Occurred())
        return NULL;
    converter = PyObject_GC_New(UtcTimestamp, &UtcTimestampType);
    if (converter == NULL)
        return NULL;
    converter->fraction_digits = digits < -1 ? -1 : digits > 10 ? 10 : (int)digits;
    converter->fallback = Py_NewRef(args[1]);
    converter->vectorcall = utc_timestamp_vectorcall;
    PyObject_GC_Track(converter);
    return (PyObject *)converter;
}

static PyMethodDef accel_methods[] = {
    {"decode_row_change", (PyCFunction)(void (*)(void))decode_row_change, METH_FASTCALL,
     "decode_row_change(buf, columns): see walbridge.capture.pgoutput.decode_row_change_py."},
    {"convert_typed", (PyCFunction)(void (*)(void))convert_typed, METH_FASTCALL,
     "convert_typed(row, typed): see walbridge.capture.rows.convert_typed_py."},
    {"splice_envelope", (PyCFunction)(void (*)(void))splice_envelope, METH_FASTCALL,
     "splice_envelope(parts, lsn, op, key, before, after, ts_ms, value_schema, key_schema): see "
     "walbridge.events.splice_envelope_py."},
    {"utc_timestamp_fast_path", (PyCFunction)(void (*)(void))utc_timestamp_fast_path, METH_FASTCALL,
     "utc_timestamp_fast_path(fraction_digits, fallback): see "
     "walbridge.capture.values.utc_timestamp_fast_path_py."},
    {"encode_text_rows", (PyCFunction)(void (*)(void))encode_text_rows, METH_FASTCALL,
     "encode_text_rows(rows, names, typed, key_names, parts, ts_ms, value_schema, key_schema): see "
     "walbridge.capture.rows.encode_text_rows_py."},
    {"encode_change_rows", (PyCFunction)(void (*)(void))encode_change_rows, METH_FASTCALL,
     "encode_change_rows(rows, names, typed, key_names, source_pieces, ts_ms, value_schema, key_schema): see "
     "walbridge.capture.log_rows.encode_change_rows_py."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef accel_module = {
    PyModuleDef_HEAD_INIT, "walbridge._accel", "walbridge's optional compiled hot path.", -1, accel_methods,
};

PyMODINIT_FUNC
PyInit__accel(void)
{
    PyObject *orjson = PyImport_ImportModule("orjson");

    if (orjson == NULL)
        return NULL;
    orjson_dumps = PyObject_GetAttrString(orjson, "dumps");
    Py_DECREF(orjson);
    if (orjson_dumps == NULL)
        return NULL;
    if (PyType_Ready(&UtcTimestampType) < 0)
        return NULL;
    zero = PyLong_FromLong(0);
    op_read = PyUnicode_InternFromString("r");
    op_create = PyUnicode_InternFromString("c");
    op_update = PyUnicode_InternFromString("u");
    op_delete = PyUnicode_InternFromString("d");
    if (zero == NULL || op_read == NULL || op_create == NULL || op_update == NULL || op_delete == NULL)
        return NULL;
    return PyModule_Create(&accel_module);
}
