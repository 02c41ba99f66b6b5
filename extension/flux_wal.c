/*
 * WAL capture's two writer-side functions in C (sql/0025, flux/store/_native.py).
 *
 * flux.end_execution(request_id uuid, statements jsonb): called by every Flux execution
 * in its commit round trip. In WAL capture mode it writes the transactional logical message
 * 'flux' — the request id, the statements that wrote, the actor, application_name and
 * tenant — that the consumer joins to the transaction's changes; in any other mode nothing.
 * The mode is read from flux.settings at the call (never cached across calls), with the
 * snapshot a PL/pgSQL query would take there, as sql/0010's body does.
 *
 * flux.wal_actor(): the statement trigger on every table captured from the WAL. Inside a
 * Flux execution (flux.request_id set) it does nothing; otherwise it writes the message
 * 'flux.actor' (actor, application_name, tenant) for the writes that follow.
 *
 * Both write exactly what their PL/pgSQL bodies write (the keys, their values, null where
 * those write null); the consumer parses the text as JSON, so spacing is free.
 *
 * flux.record_in_wal(): called in the BEGIN of every execution (sql/0023, sql/0026). It
 * takes the shared advisory lock a capture switch takes exclusively, held to the end of the
 * transaction, then reads the mode with a snapshot taken after the lock was granted: true
 * in WAL mode, false in another, NULL under an isolation level other than READ COMMITTED
 * (whose snapshot may predate the lock) — as its PL/pgSQL body does, without PL/pgSQL's
 * call and two executor queries.
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "replication/message.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/uuid.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(flux_end_execution);
PG_FUNCTION_INFO_V1(flux_wal_actor);
PG_FUNCTION_INFO_V1(flux_record_in_wal);

/* The key of the lock a capture switch takes (sql/queries/capture.sql: switch_lock). */
#define FLUX_SWITCH_LOCK INT64CONST(5065517517330448405)

/* flux.setting('capture') = 'wal', read now. */
static bool
capture_is_wal(void)
{
	Oid			nsp = get_namespace_oid("flux", true);
	Oid			relid;
	Relation	rel;
	Snapshot	snapshot;
	TableScanDesc scan;
	HeapTuple	tuple;
	bool		wal = false;

	if (!OidIsValid(nsp))
		return false;
	relid = get_relname_relid("settings", nsp);
	if (!OidIsValid(relid))
		return false;
	rel = table_open(relid, AccessShareLock);
	snapshot = RegisterSnapshot(GetTransactionSnapshot());
	scan = table_beginscan(rel, snapshot, 0, NULL);
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		bool		isnull;
		Datum		key = heap_getattr(tuple, 1, RelationGetDescr(rel), &isnull);
		text	   *key_text;

		if (isnull)
			continue;
		key_text = DatumGetTextPP(key);
		if (VARSIZE_ANY_EXHDR(key_text) == 7 && memcmp(VARDATA_ANY(key_text), "capture", 7) == 0)
		{
			Datum		value = heap_getattr(tuple, 2, RelationGetDescr(rel), &isnull);

			if (!isnull)
			{
				text	   *value_text = DatumGetTextPP(value);

				wal = VARSIZE_ANY_EXHDR(value_text) == 3 &&
					memcmp(VARDATA_ANY(value_text), "wal", 3) == 0;
			}
			break;
		}
	}
	table_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);
	return wal;
}

/* A JSON string, or null. */
static void
json_string_or_null(StringInfo buf, const char *value)
{
	if (value == NULL)
		appendStringInfoString(buf, "null");
	else
		escape_json(buf, value);
}

/* "actor", "application_name" and "tenant", as the PL/pgSQL bodies build them. */
static void
append_who(StringInfo buf)
{
	const char *application_name = GetConfigOption("application_name", true, false);
	const char *tenant = GetConfigOption("flux.tenant", true, false);

	appendStringInfoString(buf, "\"actor\":");
	escape_json(buf, GetUserNameFromId(GetUserId(), false));
	appendStringInfoString(buf, ",\"application_name\":");
	json_string_or_null(buf, application_name);
	appendStringInfoString(buf, ",\"tenant\":");
	json_string_or_null(buf, tenant != NULL && tenant[0] != '\0' ? tenant : NULL);
}

Datum
flux_end_execution(PG_FUNCTION_ARGS)
{
	StringInfoData buf;

	if (!capture_is_wal())
		PG_RETURN_VOID();
	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"request_id\":");
	if (PG_ARGISNULL(0))
		appendStringInfoString(&buf, "null");
	else
	{
		appendStringInfoChar(&buf, '"');
		appendStringInfoString(&buf, DatumGetCString(DirectFunctionCall1(uuid_out,
																		  PG_GETARG_DATUM(0))));
		appendStringInfoChar(&buf, '"');
	}
	appendStringInfoString(&buf, ",\"statements\":");
	if (PG_ARGISNULL(1))
		appendStringInfoString(&buf, "null");
	else
	{
		Jsonb	   *statements = PG_GETARG_JSONB_P(1);

		(void) JsonbToCString(&buf, &statements->root, VARSIZE(statements));
	}
	appendStringInfoChar(&buf, ',');
	append_who(&buf);
	appendStringInfoChar(&buf, '}');
	(void) LogLogicalMessage("flux", buf.data, buf.len, true, false);
	pfree(buf.data);
	PG_RETURN_VOID();
}

Datum
flux_wal_actor(PG_FUNCTION_ARGS)
{
	const char *request_id;
	StringInfoData buf;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR, (errmsg("flux.wal_actor() runs only as a trigger")));
	/* A Flux execution's end_execution message carries its actor. */
	request_id = GetConfigOption("flux.request_id", true, false);
	if (request_id != NULL && request_id[0] != '\0')
		return PointerGetDatum(NULL);
	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	append_who(&buf);
	appendStringInfoChar(&buf, '}');
	(void) LogLogicalMessage("flux.actor", buf.data, buf.len, true, false);
	pfree(buf.data);
	return PointerGetDatum(NULL);
}

Datum
flux_record_in_wal(PG_FUNCTION_ARGS)
{
	/* First the lock, then the mode: a switch that committed while we waited is seen. */
	(void) DirectFunctionCall1(pg_advisory_xact_lock_shared_int8,
							   Int64GetDatum(FLUX_SWITCH_LOCK));
	/* Under REPEATABLE READ or SERIALIZABLE the snapshot may predate the lock: unknown. */
	if (XactIsoLevel != XACT_READ_COMMITTED)
		PG_RETURN_NULL();
	/* Under READ COMMITTED, GetTransactionSnapshot takes a new snapshot: after the lock. */
	PG_RETURN_BOOL(capture_is_wal());
}
