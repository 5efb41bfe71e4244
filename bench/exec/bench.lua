-- CPU-bound Lua workload for bench/exec/run: integer and float arithmetic, tables, strings,
-- closures and sorting. Deterministic; prints one checksum line per part.
local scale = tonumber(arg[1]) or 1

local function lcg(seed)
  local s = seed
  return function() s = (s * 1103515245 + 12345) % 2147483648; return s end
end

-- 1. prime sieve
local n = 2000000 * scale
local comp = {}
local count = 0
for i = 2, n do
  if not comp[i] then
    count = count + 1
    for j = i * i, n, i do comp[j] = true end
  end
end
print("primes", count)

-- 2. recursive calls
local function fib(k) if k < 2 then return k end return fib(k - 1) + fib(k - 2) end
print("fib", fib(24 + scale))

-- 3. sort random records with a comparison closure
local rnd = lcg(42)
local recs = {}
for i = 1, 100000 * scale do recs[i] = {key = rnd() % 100000, id = i} end
table.sort(recs, function(a, b) if a.key ~= b.key then return a.key < b.key end return a.id < b.id end)
local h = 0
for i = 1, #recs, 97 do h = (h * 31 + recs[i].id) % 1000000007 end
print("sort", h)

-- 4. strings: build, match, substitute
local parts = {}
for i = 1, 50000 * scale do parts[#parts + 1] = string.format("%d:%x;", i, rnd() % 65536) end
local s = table.concat(parts)
local sum = 0
for a, b in s:gmatch("(%d+):(%x+);") do sum = (sum + tonumber(a) * tonumber(b, 16)) % 1000000007 end
local t = s:gsub("[0-9]", "#")
print("strings", #s, sum, #t)

-- 5. floating point
local x = 0.0
for i = 1, 1000000 * scale do x = x + math.sin(i) * math.sqrt(i) / (1 + i % 7) end
print("float", string.format("%.6f", x))
