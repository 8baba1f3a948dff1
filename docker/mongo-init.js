// Runs once, when the mongodb volume is new (the image's /docker-entrypoint-initdb.d), as the
// root user MONGO_INITDB_ROOT_USERNAME. The same users as scripts/stack makes for the local stack.
const admin = db.getSiblingDB("admin");
// The service: read and write its warehouse database and the shadow `replay --into` builds
// beside it, nothing else.
admin.createUser({
  user: "martstream",
  pwd: process.env.MARTSTREAM_MONGO_PASSWORD,
  roles: [
    { role: "readWrite", db: "globalmart_dw" },
    { role: "readWrite", db: "globalmart_dw_shadow" },
  ],
});
// Mongo Express browses every database, read only.
admin.createUser({
  user: "mongo_express",
  pwd: process.env.MONGO_EXPRESS_PASSWORD,
  roles: ["readAnyDatabase", "clusterMonitor"],
});
