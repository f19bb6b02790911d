"""Demo organisation drawn from the scenarios in the design notes (DESIGN §2).

Branches with their opening hours, holidays and duty officers (总值班);
departments with escalation chains (team lead → department head → branch
head); staff with roles, skills and capacities; SLA policies; the rules.

Seeding only adds what is absent: missing documents are inserted and missing
fields of existing ones filled in, so it is safe on every start and never
overwrites an organisation's own edits. Run: ``python -m routing.demo``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from complaints_shared.mongo import create_mongo_client, service_database
from routing.assignments import store
from routing.directory import store as directory_store
from routing.directory.models import BranchCreate, DepartmentCreate, StaffCreate
from routing.rules import store as rules_store
from routing.rules.models import RoutingRule
from routing.settings import RoutingSettings
from routing.sla import store as policy_store
from routing.sla.models import SlaPolicyWrite

DEMO_ORG = "demo"

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri")
EVERY_DAY = (*WEEKDAYS, "sat", "sun")


def _hours(days: tuple[str, ...], *ranges: tuple[str, str]) -> dict[str, list[dict[str, str]]]:
    return {day: [{"start": start, "end": end} for start, end in ranges] for day in days}


# code → branch definition (hours in local time; "00:00" as an end is midnight)
BRANCHES: dict[str, dict[str, Any]] = {
    "HQ": {"name": "集团总部客户服务中心", "hours": _hours(WEEKDAYS, ("08:30", "17:30"))},
    "LZ": {
        "name": "兰州电信分公司",
        "hours": {
            **_hours(WEEKDAYS, ("08:30", "18:00")),
            **_hours(("sat",), ("09:00", "17:00")),
        },
    },
    "HOSP": {
        # The patient-relations office keeps office hours; the duty officer covers the rest.
        "name": "市第一人民医院",
        "hours": _hours(WEEKDAYS, ("08:00", "12:00"), ("14:30", "17:30")),
        "duty_officer_id": "hosp-duty",
    },
    "PROP": {
        # A burst pipe at night goes to the repairman on call.
        "name": "阳光花园物业服务中心",
        "hours": _hours(EVERY_DAY, ("08:00", "20:00")),
        "duty_officer_id": "prop-zheng",
    },
    "CEM": {
        "name": "祁连水泥厂",
        "hours": _hours(WEEKDAYS, ("08:00", "12:00"), ("13:30", "17:30")),
        # Year-end stock-taking day: the works is closed (the organisation's own closed day).
        "holidays": {"country": "CN", "closed_days": ["2026-12-31"], "working_days": []},
    },
    "APPL": {"name": "家电售后服务站", "hours": _hours(EVERY_DAY, ("08:00", "20:00"))},
    "HOTEL": {
        "name": "金城酒店",
        "hours": _hours(EVERY_DAY, ("00:00", "00:00")),
        "holidays": {"country": None, "closed_days": [], "working_days": []},
    },
}

STANDARD_CHAIN = [{"role": "team_lead"}, {"role": "department_head"}, {"role": "branch_head"}]

# (branch, code, name, kind, categories, escalation chain)
DEPARTMENTS = [
    ("HQ", "CS", "总部客户服务中心", "customer_service", ["other"], STANDARD_CHAIN),
    ("LZ", "CS", "客户服务部", "customer_service", ["service_attitude", "other"], STANDARD_CHAIN),
    ("LZ", "BILLING", "计费账务部", "billing", ["billing"], STANDARD_CHAIN),
    ("LZ", "SALES", "市场营销部", "sales", ["policy"], STANDARD_CHAIN),
    ("LZ", "NETWORK", "网络运维部", "network", ["network"], STANDARD_CHAIN),
    (
        "HOSP",
        "PRO",
        "患者关系办公室",
        "customer_service",
        ["service_attitude", "other"],
        [{"role": "team_lead"}, {"role": "branch_head"}],
    ),
    (
        "HOSP",
        "MED",
        "医务科",
        "medical_affairs",
        ["medical", "safety"],
        [{"staff_id": "hosp-zhou"}, {"staff_id": "hosp-head"}],
    ),
    (
        "PROP",
        "RECEPTION",
        "前台接待",
        "customer_service",
        ["service_attitude", "other"],
        STANDARD_CHAIN,
    ),
    ("PROP", "REPAIR", "工程维修部", "repair", ["after_sales"], STANDARD_CHAIN),
    ("CEM", "QA", "质量技术部", "quality", ["product_quality"], STANDARD_CHAIN),
    ("CEM", "SALES", "销售服务部", "customer_service", ["delivery", "other"], STANDARD_CHAIN),
    (
        "APPL",
        "SERVICE",
        "售后服务部",
        "after_sales",
        ["after_sales", "product_quality"],
        STANDARD_CHAIN,
    ),
    ("HOTEL", "FRONT", "前厅部", "customer_service", ["service_attitude", "other"], STANDARD_CHAIN),
]

# (id, branch, department, name, role, capacity, skills). Leads and heads carry no automatic
# work (capacity 0): they receive escalations; the duty officers take urgent work at night.
STAFF = [
    ("hq-zhao", "HQ", "CS", "赵敏", "agent", 30, ["vip"]),
    ("hq-qian", "HQ", "CS", "钱主管", "team_lead", 0, []),
    ("hq-head", "HQ", "CS", "孙总监", "branch_head", 0, []),
    ("lz-wang", "LZ", "CS", "王芳", "agent", 20, ["vip"]),
    ("lz-li", "LZ", "CS", "李强", "agent", 20, []),
    ("lz-hu", "LZ", "CS", "胡组长", "team_lead", 0, []),
    ("lz-song", "LZ", "CS", "宋主任", "department_head", 0, []),
    ("lz-gm", "LZ", "CS", "马总经理", "branch_head", 0, []),
    ("lz-chen", "LZ", "BILLING", "陈静", "agent", 20, ["billing"]),
    ("lz-liu", "LZ", "BILLING", "刘洋", "agent", 20, ["billing"]),
    ("lz-gao", "LZ", "BILLING", "高组长", "team_lead", 0, ["billing"]),
    ("lz-xie", "LZ", "BILLING", "谢主任", "department_head", 0, ["billing"]),
    ("lz-zhang", "LZ", "SALES", "张伟", "agent", 20, []),
    ("lz-yang", "LZ", "NETWORK", "杨磊", "agent", 20, []),
    ("hosp-sun", "HOSP", "PRO", "孙丽", "agent", 20, []),
    ("hosp-qin", "HOSP", "PRO", "秦护士长", "team_lead", 0, []),
    ("hosp-duty", "HOSP", "PRO", "郑总值班", "team_lead", 0, []),
    ("hosp-head", "HOSP", "PRO", "王院长", "branch_head", 0, []),
    ("hosp-zhou", "HOSP", "MED", "周科长", "department_head", 10, ["medical"]),
    ("hosp-lin", "HOSP", "MED", "林医生", "agent", 10, ["medical"]),
    ("prop-wu", "PROP", "RECEPTION", "吴霞", "agent", 20, []),
    ("prop-zheng", "PROP", "REPAIR", "郑师傅", "agent", 15, []),
    ("prop-lu", "PROP", "REPAIR", "陆经理", "department_head", 0, []),
    ("prop-head", "PROP", "RECEPTION", "物业经理", "branch_head", 0, []),
    ("cem-feng", "CEM", "QA", "冯工", "agent", 15, ["product_quality"]),
    ("cem-he", "CEM", "SALES", "何经理", "agent", 15, []),
    ("cem-head", "CEM", "QA", "厂长", "branch_head", 0, []),
    ("appl-xu", "APPL", "SERVICE", "徐师傅", "agent", 15, []),
    ("appl-head", "APPL", "SERVICE", "站长", "branch_head", 0, []),
    ("hotel-ma", "HOTEL", "FRONT", "马经理", "team_lead", 15, []),
    ("hotel-gm", "HOTEL", "FRONT", "酒店总经理", "branch_head", 0, []),
]


def _targets(**by_severity: tuple[tuple, tuple]) -> dict[str, Any]:
    def duration(spec: tuple) -> dict[str, Any]:
        amount, unit, basis = spec
        return {"amount": amount, "unit": unit, "basis": basis}

    return {
        severity: {"acknowledge": duration(ack), "resolve": duration(resolve)}
        for severity, (ack, resolve) in by_severity.items()
    }


SLA_POLICIES: dict[str, dict[str, Any]] = {
    "standard": {
        "name": "标准时限",
        "is_default": True,
        "targets": _targets(
            critical=((1, "hours", "calendar"), (24, "hours", "calendar")),
            high=((4, "hours", "business"), (3, "days", "business")),
            normal=((1, "end_of_business_day", "business"), (7, "days", "business")),
            low=((2, "days", "business"), (15, "days", "business")),
        ),
    },
    "medical": {
        "name": "医疗投诉时限",
        "categories": ["medical", "safety"],
        "targets": _targets(
            critical=((30, "minutes", "calendar"), (24, "hours", "calendar")),
            high=((2, "hours", "calendar"), (2, "days", "business")),
        ),
        "regulatory_report_within": {"amount": 6, "unit": "hours", "basis": "calendar"},
    },
    "regulator": {
        "name": "监管转办时限",
        "targets": _targets(
            high=((2, "hours", "business"), (2, "days", "business")),
            normal=((4, "hours", "business"), (5, "days", "business")),
        ),
    },
}

RULES: list[dict[str, Any]] = [
    {
        "id": "major-medical-incident",
        "name": "疑似医疗事故 / 人身伤害 → 医务科",
        "branches": ["HOSP"],
        "conditions": {"keywords_any": ["医疗事故", "死亡", "重伤", "误诊", "手术失误"]},
        "action": {
            "department_kind": "medical_affairs",
            "severity_override": "critical",
            "sla_policy": "medical",
            "major_incident": True,
            "notify_roles": ["branch_head"],
        },
    },
    {
        "id": "medical-category",
        "name": "医疗类投诉 → 医务科",
        "branches": ["HOSP"],
        "conditions": {"categories": ["medical", "safety"]},
        "action": {"department_kind": "medical_affairs", "required_skill": "medical"},
    },
    {
        "id": "regulator-involved",
        "name": "监管部门转办 / 媒体曝光 → 客户服务部，主任与总经理知悉",
        "conditions": {"flags_any": ["regulator_involved", "media_risk"]},
        "action": {
            "department_kind": "customer_service",
            "severity_override": "high",
            "sla_policy": "regulator",
            "notify_roles": ["department_head", "branch_head"],
        },
    },
    {
        "id": "billing-keywords",
        "name": "计费 / 欠费 / 年费 → 计费账务部",
        "conditions": {"keywords_any": ["欠费", "扣费", "话费", "账单", "年费", "多收", "billing"]},
        "action": {"department_kind": "billing"},
    },
    {
        "id": "billing-category",
        "name": "计费类投诉 → 计费账务部",
        "conditions": {"categories": ["billing"]},
        "action": {"department_kind": "billing"},
    },
    {
        "id": "mis-selling",
        "name": "捆绑销售 / 强制办理 → 市场营销部",
        "conditions": {"keywords_any": ["捆绑", "强制", "套餐", "误导"]},
        "action": {"department_kind": "sales", "notify_roles": ["team_lead"]},
    },
    {
        "id": "network-faults",
        "name": "网络故障 → 网络运维部",
        "conditions": {"keywords_any": ["宽带", "断网", "信号", "网速"]},
        "action": {"department_kind": "network"},
    },
    {
        "id": "network-category",
        "name": "网络类投诉 → 网络运维部",
        "conditions": {"categories": ["network"]},
        "action": {"department_kind": "network"},
    },
    {
        "id": "repairs",
        "name": "维修 / 上门 → 维修或售后",
        "conditions": {"keywords_any": ["维修", "漏水", "上门", "报修"]},
        "action": {"department_kind": "repair"},
    },
    {
        "id": "product-quality",
        "name": "产品质量 → 质量技术部",
        "conditions": {"categories": ["product_quality"]},
        "action": {"department_kind": "quality"},
    },
    {
        "id": "after-sales",
        "name": "售后服务 → 售后服务部",
        "conditions": {"categories": ["after_sales", "product_quality"]},
        "action": {"department_kind": "after_sales"},
    },
    {
        "id": "vip-customers",
        "name": "VIP 客户 → 客户服务部 VIP 专席",
        "conditions": {"vip": True},
        "action": {
            "department_kind": "customer_service",
            "required_skill": "vip",
            "notify_roles": ["team_lead"],
        },
    },
    {
        "id": "branch-customer-service",
        "name": "其他投诉 → 本分支客户服务",
        "conditions": {},
        "action": {"department_kind": "customer_service"},
    },
    {
        "id": "default",
        "name": "兜底：总部客户服务中心",
        "is_default": True,
        "action": {"department_id": "HQ:CS"},
    },
]


def _stamp(document: dict[str, Any], now: datetime) -> dict[str, Any]:
    return {**document, "version": 1, "created_at": now, "updated_at": now}


def branch_documents(org: str, now: datetime) -> list[dict[str, Any]]:
    documents = []
    for code, spec in BRANCHES.items():
        branch = BranchCreate.model_validate({"code": code, **spec})
        documents.append(
            _stamp(
                {
                    "_id": directory_store.branch_key(org, code),
                    "org": org,
                    **branch.model_dump(mode="json"),
                    "active": True,
                },
                now,
            )
        )
    return documents


def department_documents(org: str, now: datetime) -> list[dict[str, Any]]:
    documents = []
    for branch, code, name, kind, categories, chain in DEPARTMENTS:
        department = DepartmentCreate(
            branch=branch,
            code=code,
            name=name,
            kind=kind,
            categories=categories,
            escalation_chain=chain,
        )
        department_id = f"{branch}:{code}"
        documents.append(
            _stamp(
                {
                    "_id": directory_store.department_key(org, department_id),
                    "id": department_id,
                    "org": org,
                    **department.model_dump(mode="json"),
                    "active": True,
                },
                now,
            )
        )
    return documents


def staff_documents(org: str, now: datetime) -> list[dict[str, Any]]:
    documents = []
    for staff_id, branch, department, name, role, capacity, skills in STAFF:
        person = StaffCreate(
            id=staff_id,
            branch=branch,
            department=department,
            name=name,
            role=role,
            capacity=capacity,
            skills=skills,
        )
        documents.append(
            _stamp(
                {
                    "_id": directory_store.staff_key(org, staff_id),
                    "org": org,
                    **person.model_dump(mode="json"),
                    "department_id": f"{branch}:{department}",
                    "last_assigned_at": None,
                },
                now,
            )
        )
    return documents


def policy_documents(org: str, now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "_id": rules_store.rule_key(org, policy_id),
            "id": policy_id,
            "org": org,
            **SlaPolicyWrite.model_validate(spec).model_dump(mode="json"),
            "version": 1,
            "updated_at": now,
            "updated_by": "demo-seed",
        }
        for policy_id, spec in SLA_POLICIES.items()
    ]


def rule_documents(org: str, now: datetime) -> list[dict[str, Any]]:
    documents = []
    for position, spec in enumerate(RULES, start=1):
        rule = RoutingRule(org=org, position=position * 10, **spec)
        documents.append(
            {
                "_id": rules_store.rule_key(org, rule.id),
                **rule.model_dump(mode="json", exclude={"id"}),
                "created_at": now,
                "updated_at": now,
                "updated_by": "demo-seed",
            }
        )
    return documents


async def _seed(db: AsyncDatabase, collection: str, documents: list[dict[str, Any]]) -> int:
    """Insert absent documents; fill only the fields an existing one lacks."""
    ids = [document["_id"] for document in documents]
    existing = {doc["_id"]: doc async for doc in db[collection].find({"_id": {"$in": ids}})}
    absent = [document for document in documents if document["_id"] not in existing]
    inserted = 0
    if absent:
        try:
            result = await db[collection].insert_many(absent, ordered=False)
            inserted = len(result.inserted_ids)
        except BulkWriteError as exc:  # seeded concurrently by another process
            inserted = exc.details.get("nInserted", 0)
    for document in documents:
        current = existing.get(document["_id"])
        missing = {key: value for key, value in document.items() if current and key not in current}
        if missing:
            await db[collection].update_one({"_id": document["_id"]}, {"$set": missing})
    return inserted


async def _migrate_legacy_staff(db: AsyncDatabase, org: str) -> None:
    """Staff seeded before ids were scoped by organisation move to ``<org>:<id>``."""
    async for legacy in db[directory_store.STAFF].find({"org": org, "id": {"$exists": False}}):
        staff_id = legacy["_id"]
        moved = {
            **legacy,
            "_id": directory_store.staff_key(org, staff_id),
            "id": staff_id,
            "department_id": f"{legacy['branch']}:{legacy['department']}",
        }
        await _seed(db, directory_store.STAFF, [moved])
        await db[directory_store.STAFF].delete_one({"_id": staff_id})


async def _record_rule_versions(db: AsyncDatabase, org: str) -> None:
    versions = [
        {
            "_id": f"{rule['_id']}@{rule['version']}",
            "org": org,
            "rule_id": rule["_id"],
            "version": rule["version"],
            "change": "created",
            "changed_by": rule.get("updated_by") or "demo-seed",
            "changed_at": rule.get("updated_at") or rule.get("created_at"),
            "rule": {key: value for key, value in rule.items() if key != "_id"},
        }
        async for rule in db[rules_store.RULES].find({"org": org})
    ]
    await _seed(db, rules_store.RULE_VERSIONS, versions)


async def seed_demo_org(*, db: AsyncDatabase, org: str = DEMO_ORG) -> dict[str, int]:
    """Insert the demo organisation's missing directory entries, policies and rules."""
    now = datetime.now(UTC)
    await store.ensure_indexes(db=db)
    await _migrate_legacy_staff(db, org)
    counts = {
        "branches": await _seed(db, directory_store.BRANCHES, branch_documents(org, now)),
        "departments": await _seed(db, directory_store.DEPARTMENTS, department_documents(org, now)),
        "staff": await _seed(db, directory_store.STAFF, staff_documents(org, now)),
        "sla_policies": await _seed(db, policy_store.SLA_POLICIES, policy_documents(org, now)),
        "rules": await _seed(db, rules_store.RULES, rule_documents(org, now)),
    }
    await _record_rule_versions(db, org)
    return counts


async def _main() -> None:
    settings = RoutingSettings()
    client = create_mongo_client(settings=settings)
    try:
        counts = await seed_demo_org(db=service_database(client=client, settings=settings))
        print(f"demo organisation {DEMO_ORG!r}: inserted {counts}")
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(_main())
