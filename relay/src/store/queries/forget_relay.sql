-- outbox-relay: forget_relay
DELETE FROM outbox.relay WHERE id = $1
