/**
 * Subscriber of PostgreSQL_Data__e. Thin on purpose: all logic lives in PostgreSQLDataEventHandler so
 * that it is unit-testable and bulk-safe. Platform event triggers support only "after insert".
 */
trigger PostgreSQLDataEventTrigger on PostgreSQL_Data__e (after insert) {
    new PostgreSQLDataEventHandler(EventBus.TriggerContext.currentContext().retries).handle(Trigger.new);
}
