-- wrk script: cycle through the demo server's endpoints, including a 404.
local paths = {
  "/boot/52:54:00:00:00:01",
  "/boot/52:54:00:00:00:02?arch=x86_64",
  "/images/vmlinuz",
  "/api/status",
  "/missing/page",
}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i % #paths) + 1])
end
