/*
 * print.c — a small printf for the console.
 *
 * rt_printf formats a whole line into a buffer first and then issues one
 * console WRITE: a guest's n-th print is its n-th console exit, and a line
 * is never split across two outputs that the VMM would hold and compare
 * separately.
 */
#include "rt.h"

struct out {
	char *buf;
	size_t cap; /* bytes usable, excluding the terminating NUL */
	size_t len; /* bytes that would have been written */
};

static void put(struct out *o, char c)
{
	if (o->len < o->cap)
		o->buf[o->len] = c;
	o->len++;
}

static void put_padded(struct out *o, const char *s, size_t n, int width, int left, char pad)
{
	size_t fill = width > 0 && (size_t)width > n ? (size_t)width - n : 0;

	if (!left) {
		/* Zero padding goes after the sign. */
		if (pad == '0' && n > 0 && s[0] == '-') {
			put(o, '-');
			s++;
			n--;
		}
		while (fill--)
			put(o, pad);
	}
	for (size_t i = 0; i < n; i++)
		put(o, s[i]);
	if (left) {
		while (fill--)
			put(o, ' ');
	}
}

/* fmt_u writes v in base into the end of tmp and returns where it starts. */
static char *fmt_u(char *end, uint64_t v, unsigned base, int upper)
{
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	char *p = end;

	do {
		*--p = digits[v % base];
		v /= base;
	} while (v);
	return p;
}

int rt_vsnprintf(char *buf, size_t cap, const char *fmt, va_list ap)
{
	struct out o = { buf, cap ? cap - 1 : 0, 0 };
	char tmp[24];

	while (*fmt) {
		if (*fmt != '%') {
			put(&o, *fmt++);
			continue;
		}
		fmt++;
		int left = 0, width = 0, prec = -1, lng = 0;
		char pad = ' ';
		for (;; fmt++) {
			if (*fmt == '-')
				left = 1;
			else if (*fmt == '0')
				pad = '0';
			else
				break;
		}
		if (*fmt == '*') {
			width = va_arg(ap, int);
			fmt++;
		} else {
			while (*fmt >= '0' && *fmt <= '9')
				width = width * 10 + (*fmt++ - '0');
		}
		if (*fmt == '.') {
			fmt++;
			prec = 0;
			if (*fmt == '*') {
				prec = va_arg(ap, int);
				fmt++;
			} else {
				while (*fmt >= '0' && *fmt <= '9')
					prec = prec * 10 + (*fmt++ - '0');
			}
		}
		while (*fmt == 'l' || *fmt == 'z') {
			lng = 1; /* long, long long and size_t are all 64-bit here */
			fmt++;
		}
		char *end = tmp + sizeof(tmp);
		char *s;
		uint64_t u;
		switch (*fmt) {
		case 'd':
		case 'i': {
			int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
			u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
			s = fmt_u(end, u, 10, 0);
			if (v < 0)
				*--s = '-';
			put_padded(&o, s, (size_t)(end - s), width, left, pad);
			break;
		}
		case 'u':
		case 'x':
		case 'X':
			u = lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);
			s = fmt_u(end, u, *fmt == 'u' ? 10 : 16, *fmt == 'X');
			put_padded(&o, s, (size_t)(end - s), width, left, pad);
			break;
		case 'p':
			u = (uint64_t)(uintptr_t)va_arg(ap, void *);
			s = fmt_u(end, u, 16, 0);
			*--s = 'x';
			*--s = '0';
			put_padded(&o, s, (size_t)(end - s), width, left, ' ');
			break;
		case 'c':
			tmp[0] = (char)va_arg(ap, int);
			put_padded(&o, tmp, 1, width, left, ' ');
			break;
		case 's': {
			const char *str = va_arg(ap, const char *);
			if (!str)
				str = "(null)";
			size_t n = prec >= 0 ? rt_strnlen(str, (size_t)prec) : strlen(str);
			put_padded(&o, str, n, width, left, ' ');
			break;
		}
		case '%':
			put(&o, '%');
			break;
		case '\0':
			fmt--; /* a lone '%' at the end: print it and stop */
			put(&o, '%');
			break;
		default:
			/* Unknown conversion: show it rather than guess. */
			put(&o, '%');
			put(&o, *fmt);
			break;
		}
		fmt++;
	}
	if (cap)
		buf[o.len < o.cap ? o.len : o.cap] = '\0';
	return (int)o.len;
}

int rt_snprintf(char *buf, size_t cap, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = rt_vsnprintf(buf, cap, fmt, ap);
	va_end(ap);
	return n;
}

/* The line buffer lives in .bss: a 4 KiB array on the stack of every
 * caller would be a needless risk for guests with small memory. */
static char line[RT_PRINT_LINE_BYTES_MAX + 1];

int rt_printf(const char *fmt, ...)
{
	static const char cut[] = "...\n";
	va_list ap;
	int n;
	size_t len;

	va_start(ap, fmt);
	n = rt_vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	len = (size_t)n;
	if (len > RT_PRINT_LINE_BYTES_MAX) {
		len = RT_PRINT_LINE_BYTES_MAX;
		memcpy(line + len - (sizeof(cut) - 1), cut, sizeof(cut) - 1);
	}
	if (len > 0)
		rt_console_write(line, len);
	return (int)len;
}
