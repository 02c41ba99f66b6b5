/*
 * flux_capture.c: flux.capture_row() in C (issue 21, trigger capture's cost).
 *
 * The same row as sql/0020's PL/pgSQL trigger writes into flux.state_mutations, value for
 * value: the images (to_jsonb of OLD and NEW), the key (the primary key's columns, given
 * as the trigger's arguments, else the whole row), the record id md5(relid:key)::uuid, the
 * changed columns in the database's collation order, the request id and span (the
 * statement's leading comment, else the GUC), the actor (session_user), application_name
 * and the top transaction id. What it saves is PL/pgSQL's cost per call and its statements'
 * executor runs: one saved INSERT plan is executed per captured row.
 *
 * Built by flux/store/_native.py with the server's own headers (pg_config) when a compiler
 * is present, and loaded by absolute path; PL/pgSQL stays the fallback.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "common/md5.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "optimizer/optimizer.h"
#include "parser/parse_relation.h"
#include "partitioning/partbounds.h"
#include "partitioning/partdesc.h"
#include "rewrite/rewriteHandler.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/jsonfuncs.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/partcache.h"
#include "utils/rel.h"
#include "utils/uuid.h"
#include "utils/varlena.h"

#include "flux_row.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(flux_capture_row);

#define NARGS 14

static SPIPlanPtr insert_plan = NULL;

static const char *insert_sql =
	"INSERT INTO flux.state_mutations (record_id, table_oid, table_schema, table_name, pk, "
	"op, old, new, changed_cols, request_id, span_id, actor, application_name, txid, source) "
	"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 'trigger')";

/* The columns the trigger fills, in the order of values[] (the INSERT's $1..$14). */
static const char *const columns[NARGS] = {
	"record_id", "table_oid", "table_schema", "table_name", "pk", "op", "old", "new",
	"changed_cols", "request_id", "span_id", "actor", "application_name", "txid"};

/*
 * The direct way in: the row is formed here and handed to ExecSimpleRelationInsert on the
 * partition its committed_at falls in (what logical replication's apply does), instead of
 * running an INSERT's executor per row. What the INSERT did besides is done alike or needs
 * no doing: the columns this trigger does not fill get their defaults (identity, now(), the
 * tenant, ...), evaluated from the table's own default expressions; the row-level security
 * policy for INSERT checks tenant = flux.session_tenant(), and tenant's default is that very
 * value; the partition's constraint is checked by ExecSimpleRelationInsert. Whatever this
 * path does not handle (a table with triggers, sub-partitions, a partition whose columns
 * differ from the parent's, no partition for the row) takes the INSERT instead.
 */
typedef struct
{
	bool		valid;
	Oid			parent;
	MemoryContext context;
	int			natts;
	int		   *supplied;		/* per attribute: its index in values[], or -1 */
	ExprState **defaults;		/* per attribute: its default, or NULL */
	char	   *source;			/* per attribute: 1 for "source" (the constant 'trigger') */
	AttrNumber	partition_attnum;
	ExprContext *econtext;
} DirectCache;

/*
 * The executor state of the partition rows go into, kept across rows and transactions
 * (issue 21, fourth round): built per row, it was most of the direct insert's cost — each
 * index's IndexInfo and its predicate compiled, the CHECK constraints read from their node
 * strings and compiled, the partition constraint compiled. What it holds is derived from
 * the catalogs only, so a relcache invalidation of the partition or one of its indexes
 * drops it; the relations themselves are opened and locked per row, as before, and their
 * descriptors set into it afresh. A row that ends in an error leaves it busy, and the next
 * row builds it anew (an index's insert state may hold a buffer the abort released).
 */
typedef struct
{
	bool		ready;
	bool		busy;
	Oid			leaf;
	MemoryContext context;
	MemoryContext row_context;	/* the indexes' insert state (ii_Context), reset per row */
	int			nindexes;
	Oid		   *indexes;
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *slot;
} LeafCache;

static DirectCache direct = {false, InvalidOid, NULL, 0, NULL, NULL, NULL, 0, NULL};
static LeafCache leaf_cache = {false, false, InvalidOid, NULL, NULL, 0, NULL, NULL, NULL, NULL};
static bool callback_registered = false;

static void
invalidate_direct(Datum arg, Oid relid)
{
	int			i;

	if (relid == InvalidOid || relid == direct.parent)
		direct.valid = false;
	if (relid == InvalidOid || relid == leaf_cache.leaf)
		leaf_cache.ready = false;
	for (i = 0; leaf_cache.ready && i < leaf_cache.nindexes; i++)
		if (leaf_cache.indexes[i] == relid)
			leaf_cache.ready = false;
}

static Datum
row_image(HeapTuple tuple, TupleDesc desc)
{
	JsonTypeCategory category;
	Oid			outfunc;

	json_categorize_type(desc->tdtypeid, true, &category, &outfunc);
	return datum_to_jsonb(heap_copy_tuple_as_datum(tuple, desc), category, outfunc);
}

/* image -> name: the column's value in the image, or NULL when the key is absent. */
static JsonbValue *
image_value(Jsonb *image, const char *name)
{
	return getKeyJsonValueFromContainer(&image->root, name, strlen(name), NULL);
}

static Jsonb *
key_image(Jsonb *row, Trigger *trigger)
{
	JsonbParseState *state = NULL;
	JsonbValue *result;
	int			i;

	if (trigger->tgnargs == 0)
		return row;				/* no primary key: the whole row (as REPLICA IDENTITY FULL) */
	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (i = 0; i < trigger->tgnargs; i++)
	{
		JsonbValue	key;
		JsonbValue	null_value;
		JsonbValue *value = image_value(row, trigger->tgargs[i]);

		key.type = jbvString;
		key.val.string.val = trigger->tgargs[i];
		key.val.string.len = strlen(trigger->tgargs[i]);
		pushJsonbValue(&state, WJB_KEY, &key);
		if (value == NULL)
		{
			null_value.type = jbvNull;
			value = &null_value;
		}
		pushJsonbValue(&state, WJB_VALUE, value);
	}
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(result);
}

static Datum
changed_columns(TriggerData *data, HeapTuple old_tuple, HeapTuple new_tuple)
{
	TupleDesc	desc = RelationGetDescr(data->tg_relation);
	ColName    *names = palloc(sizeof(ColName) * (desc->natts + 1));
	int			count = changed_names(desc, old_tuple, new_tuple, names);
	Datum	   *elems = palloc(sizeof(Datum) * (count + 1));
	int			i;

	for (i = 0; i < count; i++)
		elems[i] = PointerGetDatum(cstring_to_text_with_len(names[i].name, names[i].len));
	return PointerGetDatum(construct_array_builtin(elems, count, TEXTOID));
}

/* The statement's leading /\*flux:<span>*\/ comment (sql/0007), else the GUC. */
static Datum
span_of(bool *isnull)
{
	const char *query = debug_query_string;
	const char *guc;

	if (query != NULL && strncmp(query, "/*flux:", 7) == 0)
	{
		/* split_part(substr(query, 8, 24), '*' '/', 1): 24 characters at most */
		const char *start = query + 7;
		int			len = pg_mbcharcliplen(start, strlen(start), 24);
		int			i;

		for (i = 0; i + 1 < len; i++)
			if (start[i] == '*' && start[i + 1] == '/')
				break;
		if (i + 1 >= len)
			i = len;
		if (i == 0)
		{
			*isnull = true;
			return (Datum) 0;
		}
		*isnull = false;
		return PointerGetDatum(cstring_to_text_with_len(start, i));
	}
	guc = GetConfigOption("flux.span_id", true, false);
	if (guc == NULL || guc[0] == '\0')
	{
		*isnull = true;
		return (Datum) 0;
	}
	*isnull = false;
	return PointerGetDatum(cstring_to_text(guc));
}

static bool
build_direct_cache(Relation parent)
{
	TupleDesc	desc = RelationGetDescr(parent);
	PartitionKey key = RelationGetPartitionKey(parent);
	MemoryContext old;
	int			i;
	int			j;

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(invalidate_direct, (Datum) 0);
		callback_registered = true;
	}
	if (direct.context != NULL)
		MemoryContextDelete(direct.context);
	direct.valid = false;
	direct.context = AllocSetContextCreate(CacheMemoryContext, "flux capture direct insert",
										   ALLOCSET_SMALL_SIZES);
	if (key == NULL || key->strategy != PARTITION_STRATEGY_RANGE || key->partnatts != 1 ||
		key->partattrs[0] == 0)
		return false;
	old = MemoryContextSwitchTo(direct.context);
	direct.parent = RelationGetRelid(parent);
	direct.natts = desc->natts;
	direct.supplied = palloc(sizeof(int) * desc->natts);
	direct.defaults = palloc0(sizeof(ExprState *) * desc->natts);
	direct.source = palloc0(desc->natts);
	direct.partition_attnum = key->partattrs[0];
	direct.econtext = CreateStandaloneExprContext();
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		direct.supplied[i] = -1;
		if (att->attisdropped)
			continue;
		for (j = 0; j < NARGS; j++)
			if (strcmp(NameStr(att->attname), columns[j]) == 0)
				direct.supplied[i] = j;
		if (direct.supplied[i] >= 0)
			continue;
		if (strcmp(NameStr(att->attname), "source") == 0)
		{
			direct.source[i] = 1;
			continue;
		}
		if (att->attgenerated)
		{
			MemoryContextSwitchTo(old);
			return false;		/* generated columns: leave them to the INSERT */
		}
		{
			Node	   *expr = build_column_default(parent, i + 1);

			if (expr != NULL)
				direct.defaults[i] = ExecInitExpr(expression_planner((Expr *) expr), NULL);
		}
	}
	MemoryContextSwitchTo(old);
	direct.valid = true;
	return true;
}

/* Whether the partition's columns are the parent's, one for one (names, types, order). */
static bool
same_columns(TupleDesc parent, TupleDesc leaf)
{
	int			i;

	if (parent->natts != leaf->natts)
		return false;
	for (i = 0; i < parent->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(parent, i);
		Form_pg_attribute b = TupleDescAttr(leaf, i);

		if (a->attisdropped != b->attisdropped || a->atttypid != b->atttypid ||
			(!a->attisdropped && strcmp(NameStr(a->attname), NameStr(b->attname)) != 0))
			return false;
	}
	return true;
}

/*
 * Build the partition's executor state (LeafCache) for `leaf`, whose indexes are not open:
 * as logical replication's apply sets up its one-relation executor state, in a memory
 * context of its own. False when the partition's columns are not the parent's.
 */
static bool
build_leaf_cache(TupleDesc parent_desc, Relation leaf)
{
	MemoryContext old;
	RangeTblEntry *rte;
	List	   *perminfos = NIL;
	ResultRelInfo *rri;
	int			i;

	if (leaf_cache.context != NULL)
		MemoryContextDelete(leaf_cache.context);
	leaf_cache.context = NULL;
	leaf_cache.ready = false;
	leaf_cache.leaf = InvalidOid;
	leaf_cache.nindexes = 0;
	if (!same_columns(parent_desc, RelationGetDescr(leaf)))
		return false;
	leaf_cache.context = AllocSetContextCreate(CacheMemoryContext, "flux capture partition",
											   ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(leaf_cache.context);
	/* Ready from here: an invalidation while this builds makes the next row build again. */
	leaf_cache.ready = true;
	leaf_cache.leaf = RelationGetRelid(leaf);
	leaf_cache.estate = CreateExecutorState();
	rte = makeNode(RangeTblEntry);
	rte->rtekind = RTE_RELATION;
	rte->relid = RelationGetRelid(leaf);
	rte->relkind = leaf->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	addRTEPermissionInfo(&perminfos, rte);
	ExecInitRangeTable(leaf_cache.estate, list_make1(rte), perminfos, bms_make_singleton(1));
	rri = makeNode(ResultRelInfo);
	InitResultRelInfo(rri, leaf, 1, NULL, 0);
	ExecOpenIndices(rri, false);
	leaf_cache.rri = rri;
	leaf_cache.nindexes = rri->ri_NumIndices;
	leaf_cache.indexes = palloc(sizeof(Oid) * (rri->ri_NumIndices + 1));
	leaf_cache.row_context = AllocSetContextCreate(leaf_cache.context, "flux capture row",
												   ALLOCSET_SMALL_SIZES);
	for (i = 0; i < rri->ri_NumIndices; i++)
	{
		/*
		 * An index method keeps its insert state in ii_Context (BRIN: its descriptor and
		 * revmap; GIN: its GinState), made for one statement: reset after each row.
		 */
		rri->ri_IndexRelationInfo[i]->ii_Context = leaf_cache.row_context;
		leaf_cache.indexes[i] = RelationGetRelid(rri->ri_IndexRelationDescs[i]);
		index_close(rri->ri_IndexRelationDescs[i], RowExclusiveLock);
		rri->ri_IndexRelationDescs[i] = NULL;
	}
	leaf_cache.slot = ExecInitExtraTupleSlot(leaf_cache.estate,
											 CreateTupleDescCopy(RelationGetDescr(leaf)),
											 &TTSOpsVirtual);
	MemoryContextSwitchTo(old);
	return true;
}

/* Insert the row straight into its partition; false when the INSERT must do it. */
static bool
direct_insert(Datum *values, const char *nulls)
{
	Oid			parent_oid;
	Relation	parent;
	Relation	leaf;
	TupleDesc	desc;
	PartitionKey key;
	PartitionDesc partitions;
	ResultRelInfo *rri;
	TupleTableSlot *slot;
	Datum	   *row;
	bool	   *row_nulls;
	int			part_index = -1;
	int			attempt;
	int			i;

	parent_oid = direct.valid ? direct.parent :
		get_relname_relid("state_mutations", get_namespace_oid("flux", false));
	if (!OidIsValid(parent_oid))
		return false;
	parent = try_table_open(parent_oid, RowExclusiveLock);
	if (parent == NULL)
		return false;
	if (parent->rd_rel->relkind != RELKIND_PARTITIONED_TABLE || parent->trigdesc != NULL ||
		strcmp(RelationGetRelationName(parent), "state_mutations") != 0 ||
		(!(direct.valid && direct.parent == parent_oid) && !build_direct_cache(parent)))
	{
		table_close(parent, NoLock);
		return false;
	}
	desc = RelationGetDescr(parent);
	if (desc->natts != direct.natts)
	{
		table_close(parent, NoLock);
		return false;
	}
	row = palloc(sizeof(Datum) * desc->natts);
	row_nulls = palloc(sizeof(bool) * desc->natts);
	ResetExprContext(direct.econtext);
	for (i = 0; i < desc->natts; i++)
	{
		int			j = direct.supplied[i];

		if (j >= 0)
		{
			row[i] = values[j];
			row_nulls[i] = nulls[j] == 'n';
		}
		else if (direct.source[i])
		{
			row[i] = PointerGetDatum(cstring_to_text("trigger"));
			row_nulls[i] = false;
		}
		else if (direct.defaults[i] != NULL)
			row[i] = ExecEvalExprSwitchContext(direct.defaults[i], direct.econtext,
											   &row_nulls[i]);
		else
		{
			row[i] = (Datum) 0;
			row_nulls[i] = true;
		}
	}

	/* The partition, as the executor routes (execPartition.c: get_partition_for_tuple). */
	key = RelationGetPartitionKey(parent);
	partitions = RelationGetPartitionDesc(parent, !IsolationUsesXactSnapshot());
	if (partitions->nparts > 0 && partitions->boundinfo != NULL &&
		!row_nulls[direct.partition_attnum - 1])
	{
		bool		equal = false;
		int			offset = partition_range_datum_bsearch(key->partsupfunc,
														   key->partcollation,
														   partitions->boundinfo, 1,
														   &row[direct.partition_attnum - 1],
														   &equal);

		part_index = partitions->boundinfo->indexes[offset + 1];
		if (part_index < 0)
			part_index = partitions->boundinfo->default_index;
	}
	if (part_index < 0 || !partitions->is_leaf[part_index])
	{
		table_close(parent, NoLock);
		return false;
	}
	leaf = table_open(partitions->oids[part_index], RowExclusiveLock);
	if (leaf->rd_rel->relkind != RELKIND_RELATION || leaf->trigdesc != NULL)
	{
		table_close(leaf, NoLock);
		table_close(parent, NoLock);
		return false;
	}

	/*
	 * The partition's executor state, built once and kept (LeafCache); its indexes are
	 * opened and locked per row, as ExecOpenIndices would. Opening them may take in an
	 * invalidation that drops the state: then it is built again, once.
	 */
	for (attempt = 0;; attempt++)
	{
		if (!leaf_cache.ready || leaf_cache.busy ||
			leaf_cache.leaf != RelationGetRelid(leaf))
		{
			leaf_cache.busy = false;
			if (attempt > 1 || !build_leaf_cache(desc, leaf))
			{
				table_close(leaf, NoLock);
				table_close(parent, NoLock);
				return false;
			}
		}
		rri = leaf_cache.rri;
		for (i = 0; i < leaf_cache.nindexes; i++)
			rri->ri_IndexRelationDescs[i] = index_open(leaf_cache.indexes[i],
													   RowExclusiveLock);
		if (leaf_cache.ready)
			break;
		for (i = 0; i < leaf_cache.nindexes; i++)
		{
			index_close(rri->ri_IndexRelationDescs[i], RowExclusiveLock);
			rri->ri_IndexRelationDescs[i] = NULL;
		}
	}

	/* Busy until the indexes' insert state is cleaned up: an error in between rebuilds. */
	leaf_cache.busy = true;
	rri->ri_RelationDesc = leaf;
	leaf_cache.estate->es_output_cid = GetCurrentCommandId(true);
	slot = leaf_cache.slot;
	ExecClearTuple(slot);
	memcpy(slot->tts_values, row, sizeof(Datum) * desc->natts);
	memcpy(slot->tts_isnull, row_nulls, sizeof(bool) * desc->natts);
	ExecStoreVirtualTuple(slot);
	ExecSimpleRelationInsert(rri, leaf_cache.estate, slot);
	for (i = 0; i < leaf_cache.nindexes; i++)
	{
		index_insert_cleanup(rri->ri_IndexRelationDescs[i], rri->ri_IndexRelationInfo[i]);
		index_close(rri->ri_IndexRelationDescs[i], RowExclusiveLock);
		rri->ri_IndexRelationDescs[i] = NULL;
		rri->ri_IndexRelationInfo[i]->ii_AmCache = NULL;
	}
	MemoryContextReset(leaf_cache.row_context);
	rri->ri_RelationDesc = NULL;
	ExecClearTuple(slot);
	ResetPerTupleExprContext(leaf_cache.estate);
	leaf_cache.busy = false;
	table_close(leaf, NoLock);
	table_close(parent, NoLock);
	return true;
}

Datum
flux_capture_row(PG_FUNCTION_ARGS)
{
	TriggerData *data = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	desc;
	HeapTuple	old_tuple = NULL;
	HeapTuple	new_tuple = NULL;
	Jsonb	   *old_image = NULL;
	Jsonb	   *new_image = NULL;
	Jsonb	   *key;
	const char *op;
	char	   *key_text;
	StringInfoData hashed;
	char		hex[33];
	const char *errstr = NULL;
	const char *request;
	const char *app;
	Datum		values[NARGS];
	char		nulls[NARGS];
	bool		span_null;
	int			ret;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "flux_capture_row: not called by trigger manager");
	if (!TRIGGER_FIRED_FOR_ROW(data->tg_event))
		elog(ERROR, "flux_capture_row: must be fired for each row");
	rel = data->tg_relation;
	desc = RelationGetDescr(rel);

	if (TRIGGER_FIRED_BY_INSERT(data->tg_event))
	{
		op = "INSERT";
		new_tuple = data->tg_trigtuple;
	}
	else if (TRIGGER_FIRED_BY_DELETE(data->tg_event))
	{
		op = "DELETE";
		old_tuple = data->tg_trigtuple;
	}
	else if (TRIGGER_FIRED_BY_UPDATE(data->tg_event))
	{
		op = "UPDATE";
		old_tuple = data->tg_trigtuple;
		new_tuple = data->tg_newtuple;
	}
	else
		elog(ERROR, "flux_capture_row: unexpected event");

	if (old_tuple != NULL)
		old_image = DatumGetJsonbP(row_image(old_tuple, desc));
	if (new_tuple != NULL)
		new_image = DatumGetJsonbP(row_image(new_tuple, desc));
	key = key_image(new_image != NULL ? new_image : old_image, data->tg_trigger);

	key_text = JsonbToCString(NULL, &key->root, VARSIZE(key));
	initStringInfo(&hashed);
	appendStringInfo(&hashed, "%u:%s", RelationGetRelid(rel), key_text);
	if (!pg_md5_hash(hashed.data, hashed.len, hex, &errstr))
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY),
						errmsg("could not compute MD5 hash: %s", errstr)));

	memset(nulls, ' ', sizeof(nulls));
	values[0] = DirectFunctionCall1(uuid_in, CStringGetDatum(hex));
	values[1] = ObjectIdGetDatum(RelationGetRelid(rel));
	values[2] = PointerGetDatum(cstring_to_text(get_namespace_name(RelationGetNamespace(rel))));
	values[3] = PointerGetDatum(cstring_to_text(RelationGetRelationName(rel)));
	values[4] = JsonbPGetDatum(key);
	values[5] = PointerGetDatum(cstring_to_text(op));
	if (old_image != NULL)
		values[6] = JsonbPGetDatum(old_image);
	else
		nulls[6] = 'n';
	if (new_image != NULL)
		values[7] = JsonbPGetDatum(new_image);
	else
		nulls[7] = 'n';
	values[8] = changed_columns(data, old_tuple, new_tuple);
	request = GetConfigOption("flux.request_id", true, false);
	if (request == NULL || request[0] == '\0')
		nulls[9] = 'n';
	else
		values[9] = DirectFunctionCall1(uuid_in, CStringGetDatum(request));
	values[10] = span_of(&span_null);
	if (span_null)
		nulls[10] = 'n';
	values[11] = PointerGetDatum(cstring_to_text(GetUserNameFromId(GetSessionUserId(), false)));
	app = GetConfigOption("application_name", true, false);
	if (app == NULL)
		nulls[12] = 'n';
	else
		values[12] = PointerGetDatum(cstring_to_text(app));
	values[13] = Int64GetDatum((int64) U64FromFullTransactionId(GetTopFullTransactionId()));

	if (direct_insert(values, nulls))
		return PointerGetDatum(NULL);

	SPI_connect();
	if (insert_plan == NULL)
	{
		Oid			types[NARGS] = {UUIDOID, OIDOID, TEXTOID, TEXTOID, JSONBOID, TEXTOID,
		JSONBOID, JSONBOID, TEXTARRAYOID, UUIDOID, TEXTOID, TEXTOID, TEXTOID, INT8OID};
		SPIPlanPtr	plan = SPI_prepare(insert_sql, NARGS, types);

		if (plan == NULL)
			elog(ERROR, "flux_capture_row: SPI_prepare failed: %s",
				 SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "flux_capture_row: SPI_keepplan failed");
		insert_plan = plan;
	}
	ret = SPI_execute_plan(insert_plan, values, nulls, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "flux_capture_row: INSERT failed: %s", SPI_result_code_string(ret));
	SPI_finish();
	return PointerGetDatum(NULL);
}
