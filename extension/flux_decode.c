/*
 * flux_decode.c: WAL capture's logical decoding output plugin (issue 21, the consumer's cost).
 *
 * pgoutput sends each change as its columns' text and leaves everything else to the
 * consumer: the images as to_jsonb shows them, the key, the record id, the changed columns,
 * COPY's escaping. This plugin sends, for each committed transaction, each change already as
 * the first six COPY columns of its flux.state_mutations row -- record_id, pk, op, old, new,
 * changed_cols, each followed by a tab -- computed as flux_capture.c's trigger computes them
 * (to_jsonb's own code for the images, md5(relid:key) for the record id, the changed
 * columns compared as jsonb and sorted in the database's collation: flux_row.h, shared
 * with the trigger). Where
 * it can, it also adds what the transaction's logical messages say (request, span, actor)
 * and sends the transaction's rows whole ('L'), which the consumer forwards to COPY as they
 * are; else the consumer adds them to each change's record.
 *
 * The stream (each OutputPluginWrite is one frame; a transaction is written at its commit, in
 * pieces of about a megabyte when larger), as records of <tag:1><length:4><payload>:
 *   'B' final_lsn:8 commit_time:8 xid:4          as pgoutput's Begin
 *   'R' relid:4 namespace \0 name                before a relation's first change in a session
 *   'M' transactional:1 lsn:8 prefix \0 content  a logical message (its own frame if not
 *                                                transactional)
 *   'I' 'U' 'D' relid:4 body                     a change; an empty body: an UPDATE that
 *                                                changed nothing (no row, as the trigger's WHEN)
 *   'T' relid:4 body                             one truncated relation
 *   'L' count:4 lines                            the transaction's rows, whole: the COPY
 *                                                lines of its changes (as_lines); the
 *                                                changes' records and the 'flux' message
 *                                                are then not sent
 *   'C' flags:1 commit_lsn:8 end_lsn:8 commit_time:8   as pgoutput's Commit
 * Every frame starts with the format's version byte (FORMAT_VERSION: 2; 1 had no 'L').
 *
 * Options: those pgoutput takes for the same slot (flux/capture: start_replication, peek):
 * publication_names (the one publication whose tables are sent), origin ('none': leave out
 * the transactions stamped with a replication origin); proto_version and messages are
 * accepted and ignored.
 *
 * Built by flux/store/_native.py with the server's own headers into the data directory's
 * flux_native/, and named by the slot as 'flux_native/flux_decode-<hash>.so' (relative to the
 * data directory, every backend's working directory). pgoutput stays the fallback.
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/htup_details.h"
#include "catalog/partition.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_publication.h"
#include "catalog/pg_type.h"
#include "common/jsonapi.h"
#include "common/md5.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "nodes/bitmapset.h"
#include "nodes/miscnodes.h"
#include "parser/scansup.h"
#include "port/pg_bswap.h"
#include "replication/logical.h"
#include "replication/origin.h"
#include "replication/output_plugin.h"
#include "replication/reorderbuffer.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/datum.h"
#include "utils/fmgrprotos.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/jsonfuncs.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/syscache.h"
#include "utils/varlena.h"

#include "flux_row.h"

PG_MODULE_MAGIC;

#define FORMAT_VERSION 2
#define FLUSH_BYTES (1024 * 1024)

/* What a change's whole row needs besides its body (the 'L' record: build_lines). */
typedef struct
{
	char	   *copyrel;		/* relid, namespace and name in COPY text, tab-separated */
	char	   *table;			/* the name in lower case; NULL: not ASCII */
	const char *actor;			/* the 'flux.actor' in effect: its three COPY columns */
} ChangeInfo;

typedef struct
{
	MemoryContext context;		/* per change, reset after each */
	MemoryContext txn_context;	/* the transaction's buffer */
	StringInfo	buffer;			/* the transaction so far (records) */
	char	   *publication;
	bool		local_only;
	/* The transaction being read, for its rows in whole (reset by decode_begin). */
	bool		lines_ok;		/* nothing yet that only the consumer may decide */
	ChangeInfo *changes;
	int			nchanges;
	int			maxchanges;
	const char *actor;			/* the last 'flux.actor' message's columns, or NULL */
	struct Message *request;	/* the last 'flux' or 'flux.record' message's request */
	struct Message *request_actor;	/* a 'flux.record' message's actor line (else NULL) */
} DecodeState;

typedef struct
{
	Oid			relid;			/* the hash key */
	bool		valid;
	bool		published;
	bool		sent;			/* its 'R' record went out in this session */
	char		copyrel[16 + 4 * NAMEDATALEN];	/* ChangeInfo's, as of the last validation */
	char		table[NAMEDATALEN]; /* "": the name is not ASCII */
} RelEntry;

static bool take_message(DecodeState *state, const char *prefix, Size size,
						 const char *message);
static StringInfo as_lines(DecodeState *state, ReorderBufferTXN *txn, XLogRecPtr commit_lsn);
static void append_copy_n(StringInfo out, const char *text, int len);

static HTAB *relations = NULL;
static Oid	publication_oid = InvalidOid;
static bool publication_known = false;
static bool callbacks_registered = false;

static void
relation_invalidated(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	RelEntry   *entry;

	if (relations == NULL)
		return;
	if (OidIsValid(relid))
	{
		entry = hash_search(relations, &relid, HASH_FIND, NULL);
		if (entry != NULL)
			entry->valid = entry->sent = false;
		return;
	}
	hash_seq_init(&status, relations);
	while ((entry = hash_seq_search(&status)) != NULL)
		entry->valid = entry->sent = false;
}

static void
publications_changed(Datum arg, int cacheid, uint32 hashvalue)
{
	HASH_SEQ_STATUS status;
	RelEntry   *entry;

	publication_known = false;
	if (relations == NULL)
		return;
	hash_seq_init(&status, relations);
	while ((entry = hash_seq_search(&status)) != NULL)
		entry->valid = false;
}

static void
reset_relations(void)
{
	HASHCTL		info;

	if (relations != NULL)
		hash_destroy(relations);
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(Oid);
	info.entrysize = sizeof(RelEntry);
	info.hcxt = CacheMemoryContext;
	relations = hash_create("flux_decode relations", 64, &info,
							HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	publication_known = false;
	if (!callbacks_registered)
	{
		CacheRegisterRelcacheCallback(relation_invalidated, (Datum) 0);
		CacheRegisterSyscacheCallback(PUBLICATIONRELMAP, publications_changed, (Datum) 0);
		CacheRegisterSyscacheCallback(PUBLICATIONOID, publications_changed, (Datum) 0);
		CacheRegisterSyscacheCallback(PUBLICATIONNAMESPACEMAP, publications_changed,
									  (Datum) 0);
		callbacks_registered = true;
	}
}

static void
decode_startup(LogicalDecodingContext *ctx, OutputPluginOptions *opt, bool is_init)
{
	DecodeState *state = palloc0(sizeof(DecodeState));
	ListCell   *option;

	state->context = AllocSetContextCreate(ctx->context, "flux_decode change",
										   ALLOCSET_DEFAULT_SIZES);
	state->txn_context = AllocSetContextCreate(ctx->context, "flux_decode transaction",
											   ALLOCSET_DEFAULT_SIZES);
	state->publication = pstrdup("flux_capture");
	foreach(option, ctx->output_plugin_options)
	{
		DefElem    *elem = lfirst(option);
		char	   *value = elem->arg != NULL ? strVal(elem->arg) : NULL;

		if (strcmp(elem->defname, "publication_names") == 0 && value != NULL)
			state->publication = pstrdup(value);
		else if (strcmp(elem->defname, "origin") == 0 && value != NULL)
			state->local_only = pg_strcasecmp(value, "none") == 0;
		/* proto_version, messages, anything else pgoutput takes: accepted, not needed */
	}
	opt->output_type = OUTPUT_PLUGIN_BINARY_OUTPUT;
	opt->receive_rewrites = false;
	ctx->output_plugin_private = state;
	reset_relations();
}

static void
decode_shutdown(LogicalDecodingContext *ctx)
{
	if (relations != NULL)
	{
		hash_destroy(relations);
		relations = NULL;
	}
}

static bool
decode_filter_origin(LogicalDecodingContext *ctx, RepOriginId origin_id)
{
	DecodeState *state = ctx->output_plugin_private;

	return state->local_only && origin_id != InvalidRepOriginId;
}

/* -- the buffer ----------------------------------------------------------------------- */

static void
record_start(StringInfo out, char tag, uint32 length)
{
	uint32		n = pg_hton32(length);

	appendStringInfoChar(out, tag);
	appendBinaryStringInfo(out, (char *) &n, 4);
}

static void
append_u32(StringInfo out, uint32 value)
{
	uint32		n = pg_hton32(value);

	appendBinaryStringInfo(out, (char *) &n, 4);
}

static void
append_u64(StringInfo out, uint64 value)
{
	uint64		n = pg_hton64(value);

	appendBinaryStringInfo(out, (char *) &n, 8);
}

static void
write_buffer(LogicalDecodingContext *ctx, StringInfo buffer, bool last)
{
	OutputPluginPrepareWrite(ctx, last);
	appendStringInfoChar(ctx->out, FORMAT_VERSION);
	appendBinaryStringInfo(ctx->out, buffer->data, buffer->len);
	OutputPluginWrite(ctx, last);
	resetStringInfo(buffer);
}

static StringInfo
txn_buffer(DecodeState *state)
{
	if (state->buffer == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(state->txn_context);

		state->buffer = makeStringInfo();
		MemoryContextSwitchTo(old);
	}
	return state->buffer;
}

static void
decode_begin(LogicalDecodingContext *ctx, ReorderBufferTXN *txn)
{
	DecodeState *state = ctx->output_plugin_private;
	StringInfo	out;

	MemoryContextReset(state->txn_context);
	state->buffer = NULL;
	state->lines_ok = true;
	state->changes = NULL;
	state->nchanges = state->maxchanges = 0;
	state->actor = NULL;
	state->request = state->request_actor = NULL;
	out = txn_buffer(state);
	record_start(out, 'B', 20);
	append_u64(out, txn->final_lsn);
	append_u64(out, (uint64) txn->xact_time.commit_time);
	append_u32(out, txn->xid);
}

static void
decode_commit(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr commit_lsn)
{
	DecodeState *state = ctx->output_plugin_private;
	StringInfo	out = txn_buffer(state);

	if (state->lines_ok && state->nchanges > 0)
	{
		MemoryContext old = MemoryContextSwitchTo(state->txn_context);
		StringInfo	whole = as_lines(state, txn, commit_lsn);

		MemoryContextSwitchTo(old);
		if (whole != NULL)
			out = state->buffer = whole;
	}
	record_start(out, 'C', 25);
	appendStringInfoChar(out, 0);
	append_u64(out, commit_lsn);
	append_u64(out, txn->end_lsn);
	append_u64(out, (uint64) txn->xact_time.commit_time);
	write_buffer(ctx, out, true);
	MemoryContextReset(state->txn_context);
	state->buffer = NULL;
}

static void
maybe_flush(LogicalDecodingContext *ctx, DecodeState *state)
{
	if (state->buffer != NULL && state->buffer->len >= FLUSH_BYTES)
	{
		write_buffer(ctx, state->buffer, false);
		state->lines_ok = false;	/* its changes went out as records */
	}
}

static void
decode_message(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr lsn,
			   bool transactional, const char *prefix, Size size, const char *message)
{
	DecodeState *state = ctx->output_plugin_private;
	size_t		prefix_len = strlen(prefix);
	StringInfo	out;
	StringInfoData single;

	if (transactional)
	{
		out = txn_buffer(state);
		if (state->lines_ok)
		{
			MemoryContext old = MemoryContextSwitchTo(state->txn_context);

			state->lines_ok = take_message(state, prefix, size, message);
			MemoryContextSwitchTo(old);
		}
	}
	else
	{
		initStringInfo(&single);
		out = &single;
	}
	record_start(out, 'M', 1 + 8 + prefix_len + 1 + size);
	appendStringInfoChar(out, transactional ? 1 : 0);
	append_u64(out, lsn);
	appendBinaryStringInfo(out, prefix, prefix_len + 1);
	appendBinaryStringInfo(out, message, size);
	if (!transactional)
	{
		write_buffer(ctx, out, true);
		pfree(single.data);
	}
	else
		maybe_flush(ctx, state);
}

/* -- which relations ------------------------------------------------------------------ */

static bool
in_publication(Oid relid, Oid pubid)
{
	List	   *pubs = GetRelationPublications(relid);
	bool		found = list_member_oid(pubs, pubid);

	list_free(pubs);
	return found;
}

/* What ChangeInfo takes from a relation: its COPY columns and its name in lower case. */
static void
relation_strings(Relation rel, RelEntry *entry)
{
	const char *nsp = get_namespace_name(RelationGetNamespace(rel));
	const char *name = RelationGetRelationName(rel);
	StringInfoData text;
	int			i;

	initStringInfo(&text);
	appendStringInfo(&text, "%u\t", RelationGetRelid(rel));
	append_copy_n(&text, nsp != NULL && nsp[0] != '\0' ? nsp : "pg_catalog",
				  nsp != NULL && nsp[0] != '\0' ? strlen(nsp) : 10);
	appendStringInfoChar(&text, '\t');
	append_copy_n(&text, name, strlen(name));
	strlcpy(entry->copyrel, text.data, sizeof(entry->copyrel));
	pfree(text.data);
	for (i = 0; name[i] != '\0' && i < NAMEDATALEN - 1; i++)
	{
		if (IS_HIGHBIT_SET(name[i]))
			break;
		entry->table[i] = pg_ascii_tolower((unsigned char) name[i]);
	}
	entry->table[name[i] == '\0' ? i : 0] = '\0';
}

static RelEntry *
relation_entry(DecodeState *state, Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	bool		found;
	RelEntry   *entry = hash_search(relations, &relid, HASH_ENTER, &found);

	if (!found)
		entry->valid = entry->sent = false;
	if (!entry->valid)
	{
		if (!publication_known)
		{
			publication_oid = get_publication_oid(state->publication, true);
			publication_known = true;
		}
		entry->published = false;
		if (OidIsValid(publication_oid))
		{
			entry->published = in_publication(relid, publication_oid);
			if (!entry->published && rel->rd_rel->relispartition)
			{
				List	   *ancestors = get_partition_ancestors(relid);
				ListCell   *lc;

				foreach(lc, ancestors)
					if (in_publication(lfirst_oid(lc), publication_oid))
						entry->published = true;
				list_free(ancestors);
			}
		}
		relation_strings(rel, entry);
		entry->valid = true;
	}
	return entry;
}

static void
send_relation(StringInfo out, Relation rel, RelEntry *entry)
{
	const char *nsp;
	const char *name = RelationGetRelationName(rel);

	if (entry->sent)
		return;
	nsp = get_namespace_name(RelationGetNamespace(rel));
	if (nsp == NULL)
		nsp = "";
	record_start(out, 'R', 4 + strlen(nsp) + 1 + strlen(name));
	append_u32(out, RelationGetRelid(rel));
	appendBinaryStringInfo(out, nsp, strlen(nsp) + 1);
	appendBinaryStringInfo(out, name, strlen(name));
	entry->sent = true;
}

/* -- a change's row, as flux_capture.c's trigger computes it ----------------------------- */

/*
 * A row's image as to_jsonb makes it. (Written as row_to_json's text instead, it cost the
 * walsender no less and the apply session's COPY more: jsonb sorts the keys it reads, and
 * jsonb's own text has them sorted already.)
 */
static Jsonb *
row_image(HeapTuple tuple, TupleDesc desc)
{
	JsonTypeCategory category;
	Oid			outfunc;

	json_categorize_type(desc->tdtypeid, true, &category, &outfunc);
	return DatumGetJsonbP(datum_to_jsonb(heap_copy_tuple_as_datum(tuple, desc), category,
										 outfunc));
}

static JsonbValue *
image_value(Jsonb *image, const char *name)
{
	return getKeyJsonValueFromContainer(&image->root, name, strlen(name), NULL);
}

/* The primary key's columns of the image (none: the whole row, as the trigger takes it). */
static Jsonb *
key_image(Relation rel, Jsonb *row)
{
	TupleDesc	desc = RelationGetDescr(rel);
	Bitmapset  *pk = RelationGetIndexAttrBitmap(rel, INDEX_ATTR_BITMAP_PRIMARY_KEY);
	JsonbParseState *parse = NULL;
	JsonbValue *result;
	int			member = -1;

	if (bms_is_empty(pk))
		return row;
	pushJsonbValue(&parse, WJB_BEGIN_OBJECT, NULL);
	while ((member = bms_next_member(pk, member)) >= 0)
	{
		AttrNumber	attnum = member + FirstLowInvalidHeapAttributeNumber;
		const char *name;
		JsonbValue	key;
		JsonbValue	null_value;
		JsonbValue *value;

		if (attnum <= 0 || attnum > desc->natts)
			continue;
		name = NameStr(TupleDescAttr(desc, attnum - 1)->attname);
		value = image_value(row, name);
		key.type = jbvString;
		key.val.string.val = (char *) name;
		key.val.string.len = strlen(name);
		pushJsonbValue(&parse, WJB_KEY, &key);
		if (value == NULL)
		{
			null_value.type = jbvNull;
			value = &null_value;
		}
		pushJsonbValue(&parse, WJB_VALUE, value);
	}
	result = pushJsonbValue(&parse, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(result);
}

/* A text[] literal of the names, an element quoted where array_in needs it. */
static char *
array_literal(ColName *names, int count)
{
	StringInfoData out;
	int			i;

	initStringInfo(&out);
	appendStringInfoChar(&out, '{');
	for (i = 0; i < count; i++)
	{
		const char *name = names[i].name;
		bool		quote = names[i].len == 0 || pg_strcasecmp(name, "NULL") == 0;
		int			j;

		for (j = 0; j < names[i].len && !quote; j++)
			quote = strchr("{}\",\\", name[j]) != NULL || scanner_isspace(name[j]);
		if (i > 0)
			appendStringInfoChar(&out, ',');
		if (!quote)
		{
			appendBinaryStringInfo(&out, name, names[i].len);
			continue;
		}
		appendStringInfoChar(&out, '"');
		for (j = 0; j < names[i].len; j++)
		{
			if (name[j] == '"' || name[j] == '\\')
				appendStringInfoChar(&out, '\\');
			appendStringInfoChar(&out, name[j]);
		}
		appendStringInfoChar(&out, '"');
	}
	appendStringInfoChar(&out, '}');
	return out.data;
}

/* The changed columns' text[] literal; NULL for an update that changed none. */
static char *
changed_columns(TupleDesc desc, HeapTuple old_tuple, HeapTuple new_tuple)
{
	ColName    *names = palloc(sizeof(ColName) * (desc->natts + 1));
	int			count = changed_names(desc, old_tuple, new_tuple, names);

	if (count == 0 && old_tuple != NULL && new_tuple != NULL)
		return NULL;
	return array_literal(names, count);
}

/* A value in COPY's text format. */
static void
append_copy(StringInfo out, const char *text)
{
	append_copy_n(out, text, strlen(text));
}

static void
append_copy_n(StringInfo out, const char *text, int len)
{
	const char *start = text;
	const char *end = text + len;
	const char *p;

	for (p = text; p < end; p++)
	{
		const char *escape;

		switch (*p)
		{
			case '\\':
				escape = "\\\\";
				break;
			case '\t':
				escape = "\\t";
				break;
			case '\n':
				escape = "\\n";
				break;
			case '\r':
				escape = "\\r";
				break;
			default:
				continue;
		}
		appendBinaryStringInfo(out, start, p - start);
		appendBinaryStringInfo(out, escape, 2);
		start = p + 1;
	}
	appendBinaryStringInfo(out, start, p - start);
}

static void
append_jsonb(StringInfo out, Jsonb *value)
{
	if (value == NULL)
		appendBinaryStringInfo(out, "\\N", 2);
	else
		append_copy(out, JsonbToCString(NULL, &value->root, VARSIZE(value)));
	appendStringInfoChar(out, '\t');
}

/*
 * The new row with each unchanged TOASTed value (not in the WAL: an on-disk pointer) taken
 * from the old row, which REPLICA IDENTITY FULL logs whole; NULL where there is none.
 */
static HeapTuple
complete_new(TupleDesc desc, HeapTuple old_tuple, HeapTuple new_tuple)
{
	Datum	   *values;
	bool	   *nulls;
	Datum	   *old_values = NULL;
	bool	   *old_nulls = NULL;
	bool		replaced = false;
	int			i;

	if (!HeapTupleHasExternal(new_tuple))
		return new_tuple;
	values = palloc(sizeof(Datum) * desc->natts);
	nulls = palloc(sizeof(bool) * desc->natts);
	heap_deform_tuple(new_tuple, desc, values, nulls);
	if (old_tuple != NULL)
	{
		old_values = palloc(sizeof(Datum) * desc->natts);
		old_nulls = palloc(sizeof(bool) * desc->natts);
		heap_deform_tuple(old_tuple, desc, old_values, old_nulls);
	}
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || nulls[i] || att->attlen != -1 ||
			!VARATT_IS_EXTERNAL_ONDISK(DatumGetPointer(values[i])))
			continue;
		replaced = true;
		if (old_values != NULL && !old_nulls[i])
			values[i] = old_values[i];
		else
			nulls[i] = true;	/* not in the WAL at all */
	}
	return replaced ? heap_form_tuple(desc, values, nulls) : new_tuple;
}

/* A change's ChangeInfo, in the order of its record. */
static void
note_change(DecodeState *state, RelEntry *entry)
{
	MemoryContext old;
	ChangeInfo *info;

	if (!state->lines_ok)
		return;
	if (entry->table[0] == '\0')
	{
		state->lines_ok = false;	/* its lower case is Python's to say */
		return;
	}
	old = MemoryContextSwitchTo(state->txn_context);
	if (state->nchanges == state->maxchanges)
	{
		state->maxchanges = state->maxchanges == 0 ? 8 : state->maxchanges * 2;
		state->changes = state->changes == NULL
			? palloc(sizeof(ChangeInfo) * state->maxchanges)
			: repalloc(state->changes, sizeof(ChangeInfo) * state->maxchanges);
	}
	info = &state->changes[state->nchanges++];
	info->copyrel = pstrdup(entry->copyrel);
	info->table = pstrdup(entry->table);
	info->actor = state->actor;
	MemoryContextSwitchTo(old);
}

static void
decode_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, Relation rel,
			  ReorderBufferChange *change)
{
	DecodeState *state = ctx->output_plugin_private;
	TupleDesc	desc = RelationGetDescr(rel);
	RelEntry   *entry;
	StringInfo	out;
	StringInfoData body;
	MemoryContext old_context;
	HeapTuple	old_tuple = NULL;
	HeapTuple	new_tuple = NULL;
	Jsonb	   *old_image = NULL;
	Jsonb	   *new_image = NULL;
	Jsonb	   *key;
	char	   *key_text;
	char	   *changed;
	const char *op;
	char		tag;
	StringInfoData hashed;
	char		hex[33];
	const char *errstr = NULL;

	entry = relation_entry(state, rel);
	if (!entry->published)
		return;
	switch (change->action)
	{
		case REORDER_BUFFER_CHANGE_INSERT:
			tag = 'I';
			op = "INSERT";
			new_tuple = change->data.tp.newtuple;
			break;
		case REORDER_BUFFER_CHANGE_UPDATE:
			tag = 'U';
			op = "UPDATE";
			old_tuple = change->data.tp.oldtuple;
			new_tuple = change->data.tp.newtuple;
			break;
		case REORDER_BUFFER_CHANGE_DELETE:
			tag = 'D';
			op = "DELETE";
			old_tuple = change->data.tp.oldtuple;
			break;
		default:
			return;
	}
	if ((tag != 'D' && new_tuple == NULL) || (tag == 'D' && old_tuple == NULL))
		return;					/* nothing to show (a delete without REPLICA IDENTITY) */

	out = txn_buffer(state);
	send_relation(out, rel, entry);
	old_context = MemoryContextSwitchTo(state->context);
	initStringInfo(&body);
	if (new_tuple != NULL)
		new_tuple = complete_new(desc, old_tuple, new_tuple);
	if (old_tuple != NULL)
		old_image = row_image(old_tuple, desc);
	if (new_tuple != NULL)
		new_image = row_image(new_tuple, desc);
	changed = changed_columns(desc, old_tuple, new_tuple);
	if (changed != NULL)
	{
		key = key_image(rel, new_image != NULL ? new_image : old_image);
		key_text = JsonbToCString(NULL, &key->root, VARSIZE(key));
		initStringInfo(&hashed);
		appendStringInfo(&hashed, "%u:%s", RelationGetRelid(rel), key_text);
		if (!pg_md5_hash(hashed.data, hashed.len, hex, &errstr))
			ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY),
							errmsg("could not compute MD5 hash: %s", errstr)));
		appendBinaryStringInfo(&body, hex, 32);
		appendStringInfoChar(&body, '\t');
		append_copy(&body, key_text);
		appendStringInfoChar(&body, '\t');
		appendStringInfoString(&body, op);
		appendStringInfoChar(&body, '\t');
		append_jsonb(&body, old_image);
		append_jsonb(&body, new_image);
		append_copy(&body, changed);
		appendStringInfoChar(&body, '\t');
	}
	MemoryContextSwitchTo(old_context);
	note_change(state, entry);
	record_start(out, tag, 4 + body.len);
	append_u32(out, RelationGetRelid(rel));
	appendBinaryStringInfo(out, body.data, body.len);
	MemoryContextReset(state->context);
	maybe_flush(ctx, state);
}

static void
decode_truncate(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, int nrelations,
				Relation relations_[], ReorderBufferChange *change)
{
	DecodeState *state = ctx->output_plugin_private;
	static const char body[] = "\\N\t\\N\tTRUNCATE\t\\N\t\\N\t{}\t";
	StringInfo	out = txn_buffer(state);
	int			i;

	for (i = 0; i < nrelations; i++)
	{
		RelEntry   *entry = relation_entry(state, relations_[i]);

		if (!entry->published)
			continue;
		send_relation(out, relations_[i], entry);
		note_change(state, entry);
		record_start(out, 'T', 4 + sizeof(body) - 1);
		append_u32(out, RelationGetRelid(relations_[i]));
		appendBinaryStringInfo(out, body, sizeof(body) - 1);
	}
}

/* -- a transaction's rows in whole ('L') ----------------------------------------------- */
/*
 * The consumer stamps each change's row with what the transaction's logical messages say
 * (flux/capture/_decoding.py: Decoder.rows): the span of the statement that made it, its
 * position, the request id, the actor, application and tenant, the xid, the commit time
 * and LSN. Where the plugin can say all of that as the consumer would, it sends the rows
 * whole, one 'L' record before the Commit: count:4 then the rows' COPY lines; the changes'
 * own records and the 'flux' message are then left out. Anything it leaves to the consumer
 * (a name or table that is not ASCII, a message not shaped as Flux writes it, a
 * transaction flushed in pieces) sends the records as before.
 */

typedef struct
{
	const char *span;			/* the span id in COPY text */
	int64		rows;
	char	  **tables;			/* lower case, without their schema */
	int			ntables;
	bool		truncate;		/* its kind is "truncate" */
	bool		gone;			/* taken off the pending list */
} Statement;

/*
 * A message's JSON, read by PostgreSQL's JSON parser with callbacks (no jsonb built: that
 * cost the walsender ~8 µs a transaction): the top-level fields the rows need.
 */
typedef enum
{
	F_MISSING, F_NULL, F_STRING, F_OTHER
} FieldType;

typedef struct
{
	FieldType	type;
	char	   *val;			/* F_STRING: the string, unescaped */
} Field;

enum
{
	K_REQUEST_ID, K_ACTOR, K_APPLICATION_NAME, K_TENANT, K_STATEMENTS, K_OTHER
};
static const char *const field_names[] = {"request_id", "actor", "application_name", "tenant",
"statements"};

typedef struct Message
{
	Field		fields[K_STATEMENTS + 1];	/* statements: F_NULL, F_OTHER or F_STRING (an array) */
	Statement  *statements;
	int			nstatements;
	int			maxstatements;
	int			depth;			/* 1: inside the top-level object */
	int			field;			/* the top-level field being read */
	int			elem;			/* the element of the statement being read */
	bool		bad;			/* not shaped as the consumer reads it */
} Message;

static Statement *
current_statement(Message *m)
{
	return &m->statements[m->nstatements - 1];
}

static JsonParseErrorType
m_object_start(void *state)
{
	Message    *m = state;

	if (m->depth == 0)
		m->depth = 1;
	else
	{
		if (m->depth == 1 && m->field != K_OTHER)
			m->fields[m->field].type = F_OTHER;
		else if (m->depth > 1 && m->field == K_STATEMENTS)
			m->bad = true;
		m->depth++;
	}
	return JSON_SUCCESS;
}

static JsonParseErrorType
m_end(void *state)
{
	Message    *m = state;

	if (m->depth == 3 && m->field == K_STATEMENTS && !m->bad)
	{
		Statement  *s = current_statement(m);

		if (m->elem < 2 || m->elem > 3 || s->span == NULL || s->tables == NULL)
			m->bad = true;	/* [span_id, rows, tables] or [span_id, rows, tables, kind] */
	}
	m->depth--;
	return JSON_SUCCESS;
}

static JsonParseErrorType
m_array_start(void *state)
{
	Message    *m = state;

	if (m->depth == 0)
		m->bad = true;			/* not an object */
	else if (m->depth == 1)
	{
		if (m->field == K_STATEMENTS)
		{
			m->fields[K_STATEMENTS].type = F_STRING;
			m->nstatements = 0;
		}
		else if (m->field != K_OTHER)
			m->fields[m->field].type = F_OTHER;
	}
	else if (m->field == K_STATEMENTS)
	{
		if (m->depth == 2)
		{
			Statement  *s;

			if (m->nstatements == m->maxstatements)
			{
				m->maxstatements = m->maxstatements == 0 ? 8 : m->maxstatements * 2;
				m->statements = m->statements == NULL
					? palloc(sizeof(Statement) * m->maxstatements)
					: repalloc(m->statements, sizeof(Statement) * m->maxstatements);
			}
			s = &m->statements[m->nstatements++];
			memset(s, 0, sizeof(Statement));
			m->elem = -1;
		}
		else if (m->depth == 3 && m->elem == 2)
			current_statement(m)->tables = palloc(sizeof(char *) * 4);
		else
			m->bad = true;
	}
	m->depth++;
	return JSON_SUCCESS;
}

static JsonParseErrorType
m_field_start(void *state, char *fname, bool isnull)
{
	Message    *m = state;
	int			i;

	if (m->depth != 1)
		return JSON_SUCCESS;
	m->field = K_OTHER;
	for (i = 0; i <= K_STATEMENTS; i++)
		if (strcmp(fname, field_names[i]) == 0)
			m->field = i;
	return JSON_SUCCESS;
}

static JsonParseErrorType
m_element_start(void *state, bool isnull)
{
	Message    *m = state;

	if (m->depth == 3 && m->field == K_STATEMENTS)
		m->elem++;
	return JSON_SUCCESS;
}

/* A statement's table: in lower case, without its schema (ASCII only: else Python's). */
static char *
statement_table(const char *name, bool *ok)
{
	int			len = strlen(name);
	const char *dot = strrchr(name, '.');
	char	   *table;
	int			j;

	for (j = 0; j < len; j++)
		if (IS_HIGHBIT_SET(name[j]))
			*ok = false;
	table = pstrdup(dot != NULL ? dot + 1 : name);
	for (j = 0; table[j] != '\0'; j++)
		table[j] = pg_ascii_tolower((unsigned char) table[j]);
	return table;
}

static JsonParseErrorType
m_scalar(void *state, char *token, JsonTokenType type)
{
	Message    *m = state;

	if (m->depth == 0)
		m->bad = true;			/* not an object */
	else if (m->depth == 1)
	{
		if (m->field == K_OTHER)
			return JSON_SUCCESS;
		m->fields[m->field].type = type == JSON_TOKEN_NULL ? F_NULL
			: type == JSON_TOKEN_STRING && m->field != K_STATEMENTS ? F_STRING : F_OTHER;
		m->fields[m->field].val = token;
	}
	else if (m->field == K_STATEMENTS && !m->bad)
	{
		Statement  *s = m->nstatements > 0 ? current_statement(m) : NULL;

		if (m->depth == 3 && m->elem == 0 && type == JSON_TOKEN_STRING)
		{
			StringInfoData span;

			initStringInfo(&span);
			append_copy_n(&span, token, strlen(token));
			s->span = span.data;
		}
		else if (m->depth == 3 && m->elem == 0 && type == JSON_TOKEN_NULL)
			s->span = "\\N";
		else if (m->depth == 3 && m->elem == 1 && type == JSON_TOKEN_NUMBER)
		{
			char	   *end;
			const char *p = token[0] == '-' ? token + 1 : token;

			errno = 0;
			s->rows = strtoll(token, &end, 10);
			if (*end != '\0' || errno != 0 || *p == '\0' || strlen(token) > 18)
				m->bad = true;	/* not an integer */
		}
		else if (m->depth == 3 && m->elem == 3 && type == JSON_TOKEN_STRING)
			s->truncate = strcmp(token, "truncate") == 0;
		else if (m->depth == 4 && type == JSON_TOKEN_STRING)
		{
			bool		ok = true;

			if (s->ntables % 4 == 0 && s->ntables > 0)
				s->tables = repalloc(s->tables, sizeof(char *) * (s->ntables + 4));
			s->tables[s->ntables++] = statement_table(token, &ok);
			m->bad = !ok;
		}
		else
			m->bad = true;
	}
	return JSON_SUCCESS;
}

/* A message's JSON object; NULL where it is not one or not as the consumer reads it. */
static Message *
parse_message(const char *data, Size size)
{
	Message    *m = palloc0(sizeof(Message));
	JsonSemAction sem = {0};
	JsonLexContext *lex;

	sem.semstate = m;
	sem.object_start = m_object_start;
	sem.object_end = m_end;
	sem.array_start = m_array_start;
	sem.array_end = m_end;
	sem.object_field_start = m_field_start;
	sem.array_element_start = m_element_start;
	sem.scalar = m_scalar;
	lex = makeJsonLexContextCstringLen(NULL, data, size, GetDatabaseEncoding(), true);
	if (pg_parse_json(lex, &sem) != JSON_SUCCESS || m->bad || m->depth != 0)
		return NULL;
	return m;
}

/* A field of the first message that has it (a record's actor line, then its request). */
static Field *
field(Message *first, Message *second, int key)
{
	if (first != NULL && first->fields[key].type != F_MISSING)
		return &first->fields[key];
	return &second->fields[key];
}

/* "actor\tapplication_name\ttenant" in COPY text; NULL where one is neither text nor null. */
static char *
who_columns(Message *first, Message *second)
{
	StringInfoData out;
	int			key;

	initStringInfo(&out);
	for (key = K_ACTOR; key <= K_TENANT; key++)
	{
		Field	   *f = field(first, second, key);

		if (key > K_ACTOR)
			appendStringInfoChar(&out, '\t');
		if (f->type == F_MISSING || f->type == F_NULL)
			appendBinaryStringInfo(&out, "\\N", 2);
		else if (f->type == F_STRING)
			append_copy_n(&out, f->val, strlen(f->val));
		else
			return NULL;
	}
	return out.data;
}

/* Whether the transaction's rows may still be sent whole after this message. */
static bool
take_message(DecodeState *state, const char *prefix, Size size, const char *message)
{
	if (strcmp(prefix, "flux") == 0)
	{
		state->request = parse_message(message, size);
		state->request_actor = NULL;
		return state->request != NULL;
	}
	if (strcmp(prefix, "flux.actor") == 0)
	{
		Message    *actor = parse_message(message, size);

		state->actor = actor != NULL ? who_columns(actor, actor) : NULL;
		return state->actor != NULL;
	}
	if (strcmp(prefix, "flux.record") == 0)
	{
		const char *actor_end = memchr(message, '\n', size);
		const char *request_end;

		if (actor_end == NULL)
			return false;
		request_end = memchr(actor_end + 1, '\n', message + size - actor_end - 1);
		if (request_end == NULL)
			return false;
		state->request_actor = parse_message(message, actor_end - message);
		state->request = parse_message(actor_end + 1, request_end - actor_end - 1);
		return state->request != NULL && state->request_actor != NULL;
	}
	return true;				/* 'flux.switch', and what the consumer does not read */
}

static bool
touches(Statement *s, const char *table)
{
	int			i;

	if (s->ntables == 0)
		return true;
	for (i = 0; i < s->ntables; i++)
		if (strcmp(s->tables[i], table) == 0)
			return true;
	return false;
}

/* The first statement still pending at or after *head, moving *head to it. */
static Statement *
pending_head(Statement *statements, int count, int *head)
{
	while (*head < count && statements[*head].gone)
		(*head)++;
	return *head < count ? &statements[*head] : NULL;
}

/*
 * Each change's span, as flux/capture/_mutations.py: assign_spans_to gives it: a statement
 * takes as many changes of its tables as it reported rows; a change no statement claims
 * belongs to the statement before it; a truncate takes a truncating statement of its table.
 */
static const char **
assign_spans(Statement *statements, int count, ChangeInfo *changes, const char *tags,
			 int nchanges)
{
	const char **spans = palloc(sizeof(char *) * (nchanges + 1));
	const char *last = "\\N";
	int			head = 0;
	int			c;

	for (c = 0; c < nchanges; c++)
	{
		const char *table = changes[c].table;
		Statement  *s;

		if (tags[c] == 'T')
		{
			int			i;

			for (i = head; i < count; i++)
			{
				s = &statements[i];
				if (!s->gone && s->rows <= 0 && touches(s, table))
				{
					s->gone = true;
					last = s->span;
					break;
				}
			}
			spans[c] = last;
			continue;
		}
		while ((s = pending_head(statements, count, &head)) != NULL &&
			   s->rows <= 0 && !s->truncate)
			s->gone = true;
		if (s != NULL && s->rows > 0 && touches(s, table))
		{
			s->rows--;
			last = s->span;
			if (s->rows == 0)
				s->gone = true;
		}
		spans[c] = last;
	}
	return spans;
}

/*
 * The transaction's frame with its rows whole: its records but the changes' and the
 * 'flux' message's, then 'L'; NULL where the consumer must decide (the frame goes as it is).
 */
static StringInfo
as_lines(DecodeState *state, ReorderBufferTXN *txn, XLogRecPtr commit_lsn)
{
	StringInfo	in = state->buffer;
	StringInfo	out;
	StringInfoData lines;
	StringInfoData head;
	StringInfoData tail;
	Message    *request = state->request;
	Message    *request_actor = state->request_actor;
	const char *who = NULL;
	Statement  *statements = NULL;
	int			nstatements = 0;
	char	   *tags;
	const char **spans;
	struct pg_tm tm;
	fsec_t		fsec;
	int			pos;
	int			c;
	int			rows = 0;

	initStringInfo(&head);	/* "\t<request id>\t" */
	appendStringInfoChar(&head, '\t');
	if (request != NULL)
	{
		Field	   *id = field(request_actor, request, K_REQUEST_ID);
		Field	   *list = field(request_actor, request, K_STATEMENTS);

		if (id->type == F_MISSING || id->type == F_NULL ||
			(id->type == F_STRING && id->val[0] == '\0'))
			appendBinaryStringInfo(&head, "\\N", 2);
		else if (id->type != F_STRING || strpbrk(id->val, "\\\t\n\r") != NULL)
			return NULL;		/* the consumer writes it as it is */
		else
			appendStringInfoString(&head, id->val);
		who = who_columns(request_actor, request);
		if (who == NULL || list->type == F_OTHER)
			return NULL;
		if (list->type == F_STRING)	/* an array */
		{
			Message    *from = request_actor != NULL &&
				request_actor->fields[K_STATEMENTS].type != F_MISSING ? request_actor : request;

			statements = from->statements;
			nstatements = from->nstatements;
		}
	}
	else
		appendBinaryStringInfo(&head, "\\N", 2);
	appendStringInfoChar(&head, '\t');

	if (timestamp2tm(txn->xact_time.commit_time, NULL, &tm, &fsec, NULL, NULL) != 0)
		return NULL;
	initStringInfo(&tail);	/* "\t<xid>\t<commit time>\twal\t<commit lsn>\n" */
	appendStringInfo(&tail, "\t%u\t%04d-%02d-%02dT%02d:%02d:%02d.%06d+00:00\twal\t%X/%X\n",
					 txn->xid, tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min,
					 tm.tm_sec, (int) fsec, LSN_FORMAT_ARGS(commit_lsn));

	/* The changes' tags, in order, for the spans. */
	tags = palloc(state->nchanges + 1);
	c = 0;
	for (pos = 0; pos + 5 <= in->len;)
	{
		char		tag = in->data[pos];
		uint32		length;

		memcpy(&length, in->data + pos + 1, 4);
		length = pg_ntoh32(length);
		if (tag == 'I' || tag == 'U' || tag == 'D' || tag == 'T')
		{
			if (c >= state->nchanges)
				return NULL;
			tags[c++] = tag;
		}
		pos += 5 + length;
	}
	if (c != state->nchanges)
		return NULL;
	spans = assign_spans(statements, nstatements, state->changes, tags, c);

	out = makeStringInfo();
	initStringInfo(&lines);
	c = 0;
	for (pos = 0; pos + 5 <= in->len;)
	{
		char		tag = in->data[pos];
		uint32		length;
		const char *payload = in->data + pos + 5;

		memcpy(&length, in->data + pos + 1, 4);
		length = pg_ntoh32(length);
		if (tag == 'I' || tag == 'U' || tag == 'D' || tag == 'T')
		{
			ChangeInfo *info = &state->changes[c];

			c++;
			if (length > 4)		/* else an update that changed nothing */
			{
				appendBinaryStringInfo(&lines, payload + 4, length - 4);
				appendStringInfoString(&lines, spans[c - 1]);
				appendStringInfo(&lines, "\t%d\t", c);
				appendStringInfoString(&lines, info->copyrel);
				appendBinaryStringInfo(&lines, head.data, head.len);
				appendStringInfoString(&lines, who != NULL ? who
									   : info->actor != NULL ? info->actor
									   : "\\N\t\\N\t\\N");
				appendBinaryStringInfo(&lines, tail.data, tail.len);
				rows++;
			}
		}
		else if (!(tag == 'M' && length >= 9 + 5 && payload[0] == 1 &&
				   strcmp(payload + 9, "flux") == 0))
			appendBinaryStringInfo(out, in->data + pos, 5 + length);
		pos += 5 + length;
	}
	record_start(out, 'L', 4 + lines.len);
	append_u32(out, rows);
	appendBinaryStringInfo(out, lines.data, lines.len);
	return out;
}

void
_PG_output_plugin_init(OutputPluginCallbacks *cb)
{
	cb->startup_cb = decode_startup;
	cb->begin_cb = decode_begin;
	cb->change_cb = decode_change;
	cb->truncate_cb = decode_truncate;
	cb->commit_cb = decode_commit;
	cb->message_cb = decode_message;
	cb->filter_by_origin_cb = decode_filter_origin;
	cb->shutdown_cb = decode_shutdown;
}
