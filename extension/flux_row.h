/*
 * flux_row.h: what the C capture trigger (flux_capture.c) and the C decoder (flux_decode.c)
 * compute alike for a row change: which columns an UPDATE changed, as jsonb compares them,
 * sorted in the database's collation. Included by both (static functions: each library is
 * one translation unit); flux/store/_native.py builds each beside this header and counts it
 * in the library's name.
 *
 * Needs postgres.h, access/htup_details.h, utils/datum.h, utils/fmgrprotos.h, utils/jsonb.h,
 * utils/jsonfuncs.h and utils/varlena.h.
 */
#ifndef FLUX_ROW_H
#define FLUX_ROW_H

typedef struct
{
	const char *name;
	int			len;
} ColName;

static int
colname_cmp(const void *a, const void *b)
{
	const ColName *x = (const ColName *) a;
	const ColName *y = (const ColName *) b;

	return varstr_cmp(x->name, x->len, y->name, y->len, DEFAULT_COLLATION_OID);
}

/* One column's value as to_jsonb makes it. */
static Datum
column_jsonb(Form_pg_attribute att, Datum value)
{
	JsonTypeCategory category;
	Oid			outfunc;

	json_categorize_type(att->atttypid, true, &category, &outfunc);
	return datum_to_jsonb(value, category, outfunc);
}

/* Whether a column's value changed, as jsonb's IS DISTINCT FROM (1.0 and 1.00 are equal). */
static bool
column_changed(HeapTuple old_tuple, HeapTuple new_tuple, TupleDesc desc, int attnum)
{
	Form_pg_attribute att = TupleDescAttr(desc, attnum - 1);
	bool		old_null;
	bool		new_null;
	Datum		old_value = heap_getattr(old_tuple, attnum, desc, &old_null);
	Datum		new_value = heap_getattr(new_tuple, attnum, desc, &new_null);

	if (old_null && new_null)
		return false;
	if (old_null != new_null)
		return true;
	if (datumIsEqual(old_value, new_value, att->attbyval, att->attlen))
		return false;
	/* Different bytes may still be equal JSON: ask jsonb. */
	return !DatumGetBool(DirectFunctionCall2(jsonb_eq, column_jsonb(att, old_value),
											 column_jsonb(att, new_value)));
}

/*
 * The names of the columns an UPDATE changed (every column for an INSERT or DELETE: one of
 * the tuples NULL), sorted in the database's collation, into names (desc->natts + 1 long);
 * how many.
 */
static int
changed_names(TupleDesc desc, HeapTuple old_tuple, HeapTuple new_tuple, ColName *names)
{
	int			count = 0;
	int			i;

	for (i = 1; i <= desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i - 1);

		if (att->attisdropped)
			continue;
		if (old_tuple != NULL && new_tuple != NULL &&
			!column_changed(old_tuple, new_tuple, desc, i))
			continue;
		names[count].name = NameStr(att->attname);
		names[count].len = strlen(names[count].name);
		count++;
	}
	if (count > 1)
		qsort(names, count, sizeof(ColName), colname_cmp);
	return count;
}

#endif							/* FLUX_ROW_H */
